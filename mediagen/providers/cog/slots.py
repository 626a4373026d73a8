"""The health of self-hosted Cog servers, and setting one aside.

Cog has no queue: a server with every slot busy answers 409. So the scheduler keeps the queue and
counts each server's slots (`mediagen.scheduling`: a Cog model's servers are its pools). Here is
what only Cog servers need on top: their `GET /health-check`, a server set aside while it is
unhealthy or turned a job away (`down`, with a TTL), and the count of its failed checks in a row.
"""

from __future__ import annotations

import orjson

from mediagen.catalog import Endpoint
from mediagen.config import Settings
from mediagen.errors import OutboundError
from mediagen.outbound import Outbound, Policy
from mediagen.scheduling import Queues, pool_of

FAILED = "mediagen:cog:failed:"  # failed health checks in a row
HEALTHY = frozenset({"READY", "BUSY"})  # what Cog's GET /health-check says of a usable server
HEALTH_MAX_BYTES = 64 * 1024
HEALTH_DEADLINE = 5.0


class CogSlots:
    """The health of one process's Cog servers, on the scheduler's queues."""

    def __init__(self, settings: Settings, queues: Queues, outbound: Outbound) -> None:
        self.settings = settings
        self.queues = queues
        self.client = queues.client
        self.outbound = outbound
        self._health = Policy(
            deadline=min(settings.cog_timeout, HEALTH_DEADLINE),
            max_bytes=HEALTH_MAX_BYTES,
            pin=False,
            trace_context=settings.cog_trace_context,
        )

    async def set_down(self, endpoint: Endpoint, seconds: float, why: str) -> None:
        """Give `endpoint` no new work for `seconds` (or until its health check is good)."""
        await self.queues.set_down(pool_of(endpoint), seconds, why)

    async def set_up(self, endpoint: Endpoint) -> None:
        pool = pool_of(endpoint)
        await self.queues.set_up(pool)
        await self.client.delete(FAILED + pool)

    async def failed_check(self, endpoint: Endpoint, window: float) -> int:
        """Count one more failed health check; how many in a row (a gap of `window` seconds
        without one starts the count again)."""
        key = FAILED + pool_of(endpoint)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, max(1, int(window * 1000)))
            count, _ = await pipe.execute()
        return int(count)

    async def holders(self, endpoint: Endpoint) -> list[str]:
        return await self.queues.holders(pool_of(endpoint))

    async def healthy(self, endpoint: Endpoint) -> bool:
        """Whether Cog's `GET /health-check` says READY or BUSY (STARTING, SETUP_FAILED,
        DEFUNCT, an error or no answer: not healthy)."""
        try:
            reply = await self.outbound.call("GET", f"{endpoint.url}/health-check", self._health)
            status = orjson.loads(reply.body).get("status") if reply.status == 200 else None
        except (OutboundError, orjson.JSONDecodeError, AttributeError):
            return False
        return status in HEALTHY
