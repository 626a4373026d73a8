"""How many live event streams (and `Prefer: wait` answers) may be open at once.

Each open one takes a place in a scope shared by every API process (a sorted set in Redis, each
open one a member that expires unless renewed, so a crashed API's places free themselves) and
one of this process's places (the size of its pool of Redis connections for them: each open
one holds a connection for its blocking read). Past the scope's cap: 429; past the process's:
503.

- A stream's scope is its key (MAX_STREAMS_PER_KEY; anonymous callers share one), except a
  stream opened through a prediction's signed `urls.stream`: anyone holding the URL may open
  it, so it counts against that prediction (SIGNED_PER_JOB), never against its owner's key.
- `Prefer: wait` has places of its own (`kind="waits"`: MAX_WAITS_PER_KEY, MAX_WAITS, its own
  Redis pool), so waits cannot starve the streams; a wait refused a place is not waited.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import redis.asyncio as aioredis

from mediagen import redis_clients
from mediagen.config import Settings
from mediagen.errors import RateLimitedError, ServiceUnavailableError
from mediagen.keys.models import ApiKey

SLOT_SECONDS = 45.0  # an open one renews its place at least this often (every blocking read)
RETRY_AFTER = 5
# Streams one prediction's signed `urls.stream` may have open at once (several viewers of one
# prediction; more is someone replaying the URL).
SIGNED_PER_JOB = 10


def blocking_client(
    settings: Settings, name: str, places: int, block_seconds: float
) -> aioredis.Redis:
    """A Redis client for blocking reads of up to `block_seconds` (its socket timeout outlasts
    them) with one connection per place of this process and a few for the rest."""
    return redis_clients.async_client(
        settings, name, timeout=block_seconds + 5, decode=True, max_connections=places + 10
    )


class StreamSlots:
    """The places of one kind (`streams` or `waits`) in this process and in each scope."""

    def __init__(
        self, client: aioredis.Redis, per_key: int, per_process: int, kind: str = "streams"
    ) -> None:
        self.client = client
        self.per_key = per_key
        self.per_process = per_process
        self.kind = kind
        self.noun = "event streams" if kind == "streams" else "waiting requests"
        self.open = 0

    async def take(self, owner: ApiKey | None) -> Slot:
        """A place of `owner`'s (MAX_..._PER_KEY; anonymous callers share one scope)."""
        scope = str(owner.id) if owner else "anonymous"
        return await self._take(scope, self.per_key, "per key")

    async def take_signed(self, job_id: uuid.UUID) -> Slot:
        """A place of a stream opened through the job's signed URL (SIGNED_PER_JOB)."""
        return await self._take(f"signed:{job_id}", SIGNED_PER_JOB, "through one signed URL")

    async def _take(self, scope: str, cap: int, per: str) -> Slot:
        if self.open >= self.per_process:
            full = ServiceUnavailableError(
                f"this server has {self.per_process} {self.noun} open; try again shortly",
                retry_after=RETRY_AFTER,
            )
            full.limit = self.kind
            raise full
        # Counted before the first await: concurrent takers cannot all pass the check above.
        self.open += 1
        slot = Slot(self, f"mediagen:{self.kind}:{scope}")
        slot.counted = True
        try:
            taken = await slot.renew()
        except BaseException:
            await slot.release()
            raise
        if taken > cap:
            await slot.release()
            refused = RateLimitedError(
                f"at most {cap} {self.noun} may be open at once {per}", RETRY_AFTER
            )
            refused.limit = self.kind
            raise refused
        return slot


class Slot:
    """One open stream's (or wait's) place."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self.slots = slots
        self.key = key
        self.member = uuid.uuid4().hex
        self.counted = False

    async def renew(self) -> int:
        """Keep the place; how many are open in its scope (this one included)."""
        now = time.time()
        async with self.slots.client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self.key, "-inf", now)
            pipe.zadd(self.key, {self.member: now + SLOT_SECONDS})
            pipe.expire(self.key, int(SLOT_SECONDS) * 2)
            pipe.zcard(self.key)
            *_, count = await pipe.execute()
        return int(count)

    async def release(self) -> None:
        """Free the place (again is harmless)."""
        if self.counted:
            self.slots.open -= 1
            self.counted = False
        with contextlib.suppress(Exception):  # if Redis is down, it expires by itself
            await self.slots.client.zrem(self.key, self.member)
