"""Capacity of self-hosted Cog servers: a slot per prediction, a wait queue per model, and
health checks, kept in Redis and changed only by small Lua scripts (atomic, one round trip).

Cog has no queue: a server with every slot busy answers 409. So mediagen keeps the queue:

- `mediagen:cog:held:<endpoint key>`: the jobs holding a slot of that endpoint, scored by the
  lease's expiry (ms). A lease outlives the model's deadline (the longest a prediction may be in
  flight before it is given up on), so a worker that crashed while holding one frees it by
  itself; the job's own lease and the sweeper bring the job back meanwhile.
- `mediagen:cog:wait:<model>`: the model's jobs waiting for a slot, scored by priority band,
  then creation time (µs, `dispatch.queue_order`): a free slot goes to the most urgent job.
  Several endpoints of one model share it.
- `mediagen:cog:down:<endpoint key>`: set (with a TTL) while an endpoint is not to get work:
  its health check failed, or it answered 409 or refused a connection despite our accounting.

A job's `start` step runs `acquire`: the job takes a slot (of the healthy endpoint with the most
free ones) if fewer jobs wait ahead of it than there are free slots, else it waits in the queue
(still `pending` in Postgres, holding no worker and polled by nothing). Whatever ends an attempt
runs `release`, which answers the queue's heads that now fit: their `start` is sent again. The
sweeper runs `release` with no job too (expired leases, endpoints that came back), so a lost
message delays a start by a sweep at most.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from mediagen.broker import QUEUE_INDEX
from mediagen.catalog import Endpoint, ModelRoute
from mediagen.config import Settings
from mediagen.errors import OutboundError
from mediagen.outbound import Outbound, Policy
from mediagen.providers.cog.ids import endpoint_key
from mediagen.retry import MAX_POLL_WAIT

WAIT = "mediagen:cog:wait:"
HELD = "mediagen:cog:held:"
DOWN = "mediagen:cog:down:"
FAILED = "mediagen:cog:failed:"  # failed health checks in a row
HEALTHY = frozenset({"READY", "BUSY"})  # what Cog's GET /health-check says of a usable server
HEALTH_MAX_BYTES = 64 * 1024
HEALTH_DEADLINE = 5.0

# KEYS: wait, the global pending index, then (held, down) per endpoint.
# ARGV: job, order, now (ms), lease expiry (ms), then the slots of each endpoint.
# Returns the endpoint's 1-based index the job now holds a slot of, or 0: it waits.
_ACQUIRE = """
local job, order, now, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n = (#KEYS - 2) / 2
redis.call('ZREM', KEYS[2], job)
for i = 1, n do
  if redis.call('ZSCORE', KEYS[1 + 2 * i], job) then
    redis.call('ZADD', KEYS[1 + 2 * i], expiry, job)
    redis.call('ZREM', KEYS[1], job)
    return i
  end
end
redis.call('ZADD', KEYS[1], 'NX', order, job)
local rank = redis.call('ZRANK', KEYS[1], job)
local best, most, free = 0, 0, 0
for i = 1, n do
  local held, down = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  if redis.call('EXISTS', down) == 0 then
    local left = tonumber(ARGV[4 + i]) - redis.call('ZCARD', held)
    if left > 0 then
      free = free + left
      if left > most then best, most = i, left end
    end
  end
end
if best == 0 or rank >= free then return 0 end
redis.call('ZADD', KEYS[1 + 2 * best], expiry, job)
redis.call('ZREM', KEYS[1], job)
return best
"""

# KEYS as _ACQUIRE. ARGV: job ('' for none), now (ms), then the slots of each endpoint.
# Frees the job's slot (and its place in the queue), drops expired leases, and returns the
# heads of the queue that fit in the free slots of healthy endpoints, with their scores.
_RELEASE = """
local job, now = ARGV[1], tonumber(ARGV[2])
local n = (#KEYS - 2) / 2
local free = 0
if job ~= '' then redis.call('ZREM', KEYS[1], job) end
for i = 1, n do
  local held, down = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if job ~= '' then redis.call('ZREM', held, job) end
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  if redis.call('EXISTS', down) == 0 then
    local left = tonumber(ARGV[2 + i]) - redis.call('ZCARD', held)
    if left > 0 then free = free + left end
  end
end
if free == 0 then return {} end
return redis.call('ZRANGE', KEYS[1], 0, free - 1, 'WITHSCORES')
"""


def wait_key(model: str) -> str:
    return WAIT + model


def held_key(endpoint: Endpoint) -> str:
    return HELD + endpoint_key(endpoint.url)


def down_key(endpoint: Endpoint) -> str:
    return DOWN + endpoint_key(endpoint.url)


async def queue_position(
    client: aioredis.Redis, model: str, job_id: uuid.UUID | str, order: float
) -> int:
    """How many jobs are ahead of this Cog job: those of its model waiting for a slot that
    were created before it (once its start step put it in the queue, exactly its rank there)
    plus, until then, the jobs no worker has looked at yet that are ahead of it in the global
    pending index (any model: an upper bound). Jobs only ever move from the second count to
    the first (atomically, `_ACQUIRE`), or leave, so the position never grows, but for jobs of
    a higher priority submitted after it (`dispatch.queue_order`). Both are read
    in one MULTI/EXEC (a move between them would count a job in neither): one round trip,
    O(log n)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.zcount(wait_key(model), "-inf", f"({order!r}")
        pipe.zrank(QUEUE_INDEX, str(job_id))
        waiting, unseen = await pipe.execute()
    return int(waiting) + int(unseen or 0)


async def usage(client: aioredis.Redis, routes: Sequence[ModelRoute]) -> dict[str, tuple[int, int]]:
    """Each Cog model's busy and total slots (`/metrics`): the unexpired leases on its
    endpoints, and the slots of those not set aside (an endpoint set aside may still finish
    what it runs, so busy can exceed total meanwhile). One round trip for all, O(log n) each."""
    now = int(time.time() * 1000)
    async with client.pipeline(transaction=False) as pipe:
        for route in routes:
            for endpoint in route.endpoints:
                pipe.zcount(held_key(endpoint), f"({now}", "+inf")
                pipe.exists(down_key(endpoint))
        replies = iter(await pipe.execute())
    used = {}
    for route in routes:
        busy = total = 0
        for endpoint in route.endpoints:
            busy += int(next(replies))
            total += 0 if int(next(replies)) else endpoint.slots
        used[route.name] = (busy, total)
    return used


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CogSlots:
    """The slot accounting of one process (a worker's pipeline), on the outbox's Redis client."""

    def __init__(self, settings: Settings, client: aioredis.Redis, outbound: Outbound) -> None:
        self.settings = settings
        self.client = client
        self.outbound = outbound
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._health = Policy(
            deadline=min(settings.cog_timeout, HEALTH_DEADLINE),
            max_bytes=HEALTH_MAX_BYTES,
            pin=False,
            trace_context=settings.cog_trace_context,
        )
        self._margin = settings.lease_seconds + MAX_POLL_WAIT

    def _keys(self, route: ModelRoute) -> list[str]:
        keys = [wait_key(route.name), QUEUE_INDEX]
        for endpoint in route.endpoints:
            keys += [held_key(endpoint), down_key(endpoint)]
        return keys

    async def acquire(self, job_id: str, order: float, route: ModelRoute) -> Endpoint | None:
        """The endpoint whose slot the job now holds, or None: it waits in its model's queue
        (and leaves the global pending index, whose positions are for jobs no worker has
        looked at yet)."""
        now = int(time.time() * 1000)
        expiry = now + int((route.deadline + self._margin) * 1000)
        slots = [endpoint.slots for endpoint in route.endpoints]
        index = int(
            await self._acquire(
                keys=self._keys(route), args=[job_id, repr(order), now, expiry, *slots]
            )
        )
        return route.endpoints[index - 1] if index else None

    async def release(self, job_id: str, route: ModelRoute) -> list[tuple[str, float]]:
        """Free the job's slot (if it holds one) and its place in the queue; the jobs at the
        head of the queue that now fit, whose start is to be sent again, with their places
        (`dispatch.queue_order`: the start keeps the job's priority)."""
        now = int(time.time() * 1000)
        slots = [endpoint.slots for endpoint in route.endpoints]
        heads = await self._release(keys=self._keys(route), args=[job_id, now, *slots])
        return [(_text(heads[i]), float(heads[i + 1])) for i in range(0, len(heads), 2)]

    async def set_down(self, endpoint: Endpoint, seconds: float, why: str) -> None:
        """Give `endpoint` no new work for `seconds` (or until its health check is good)."""
        await self.client.set(down_key(endpoint), why, px=max(1, int(seconds * 1000)))

    async def set_up(self, endpoint: Endpoint) -> None:
        key = endpoint_key(endpoint.url)
        await self.client.delete(DOWN + key, FAILED + key)

    async def failed_check(self, endpoint: Endpoint, window: float) -> int:
        """Count one more failed health check; how many in a row (a gap of `window` seconds
        without one starts the count again)."""
        key = FAILED + endpoint_key(endpoint.url)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, max(1, int(window * 1000)))
            count, _ = await pipe.execute()
        return int(count)

    async def holders(self, endpoint: Endpoint) -> list[str]:
        return [_text(m) for m in await self.client.zrange(held_key(endpoint), 0, -1)]

    async def waiting_head(self, route: ModelRoute, count: int) -> list[str]:
        return [_text(m) for m in await self.client.zrange(wait_key(route.name), 0, count - 1)]

    async def drop_waiting(self, route: ModelRoute, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self.client.zrem(wait_key(route.name), *job_ids)

    async def healthy(self, endpoint: Endpoint) -> bool:
        """Whether Cog's `GET /health-check` says READY or BUSY (STARTING, SETUP_FAILED,
        DEFUNCT, an error or no answer: not healthy)."""
        try:
            reply = await self.outbound.call("GET", f"{endpoint.url}/health-check", self._health)
            status = orjson.loads(reply.body).get("status") if reply.status == 200 else None
        except (OutboundError, orjson.JSONDecodeError, AttributeError):
            return False
        return status in HEALTHY
