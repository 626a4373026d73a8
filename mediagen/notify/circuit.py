"""A circuit per webhook receiver: one that keeps failing is left alone for a while.

After WEBHOOK_CIRCUIT_FAILURES failed attempts in a row to one receiver (its host and port: no
answer within WEBHOOK_TIMEOUT, a network error, 408, 425, 429 or 5xx), the circuit opens: for
WEBHOOK_CIRCUIT_COOLDOWN seconds no attempt goes there, and its deliveries are put off, still
pending, without spending an attempt (`mediagen.notify.deliverer`). Then one attempt at a time
probes it: an answer closes the circuit, another failure opens it again. Any answer that is not
a failure (2xx, a 4xx such as 410) counts as the receiver being there and resets the count.

The state is kept in Redis, so every worker process of the deployment agrees on it; a receiver
failing for one worker is left alone by all of them. When Redis does not answer, the circuit
counts as closed: deliveries go on as they would without it.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from mediagen.config import Settings

log = logging.getLogger(__name__)

PREFIX = "mediagen:webhooks:circuit:"
FORGET_FAILURES = 3600  # seconds a count of failures in a row is kept after the last one
PROBE_MARGIN = 5.0  # seconds beyond WEBHOOK_TIMEOUT that a probe holds its turn at most


class Circuits:
    """The receivers' circuits, in Redis (`client`: an asyncio Redis client)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.failures = settings.webhook_circuit_failures
        self.cooldown_ms = int(settings.webhook_circuit_cooldown * 1000)
        self.probe_ms = int((settings.webhook_timeout + PROBE_MARGIN) * 1000)

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    async def closed_in(self, host: str) -> float:
        """Seconds until an attempt may go to `host`; 0: now (for a half-open circuit, this
        call took the one probe's turn)."""
        if not self.enabled:
            return 0.0
        opened, failed, probe = PREFIX + host + ":open", PREFIX + host + ":failed", None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.pttl(opened)
                pipe.get(failed)
                left, count = await pipe.execute()
            if left > 0:
                return float(left) / 1000
            if count is None or int(count) < self.failures:
                return 0.0
            probe = PREFIX + host + ":probe"
            if await self.client.set(probe, 1, nx=True, px=self.probe_ms):
                return 0.0
            return max(float(await self.client.pttl(probe)) / 1000, 0.0)
        except (RedisError, OSError, ValueError) as exc:
            log.debug("webhook circuit not read: %s", exc, extra={"receiver": host})
            return 0.0

    async def record(self, host: str, answered: bool | None) -> None:
        """What an attempt to `host` showed: it answered (True), it failed (False), or nothing
        about the receiver (None: refused before connecting, no secret to sign with)."""
        if not self.enabled or answered is None:
            return
        failed, probe = PREFIX + host + ":failed", PREFIX + host + ":probe"
        try:
            if answered:
                await self.client.delete(failed, probe)
                return
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(failed)
                pipe.expire(failed, FORGET_FAILURES)
                pipe.delete(probe)
                count, _, _ = await pipe.execute()
            if int(count) >= self.failures:
                await self.client.set(PREFIX + host + ":open", 1, px=self.cooldown_ms)
                log.warning(
                    "webhook receiver failing: circuit open",
                    extra={
                        "receiver": host,
                        "failures": int(count),
                        "cooldown": self.cooldown_ms / 1000,
                    },
                )
        except (RedisError, OSError, ValueError) as exc:
            log.debug("webhook circuit not recorded: %s", exc, extra={"receiver": host})
