"""How many live event streams may be open at once: MAX_STREAMS_PER_KEY per key, across every API
process (a sorted set per key in Redis, each open stream a member that expires unless renewed,
so a crashed API's streams free their places by themselves), and MAX_STREAMS per API process
(the size of its pool of Redis connections for streams: each open stream holds one for its
blocking read). Past the first: 429; past the second: 503.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import redis.asyncio as aioredis

from mediagen.errors import RateLimitedError, ServiceUnavailableError
from mediagen.keys.models import ApiKey

SLOT_SECONDS = 45.0  # a stream renews its place at least this often (every blocking read)
RETRY_AFTER = 5


class StreamSlots:
    def __init__(self, client: aioredis.Redis, per_key: int, per_process: int) -> None:
        self.client = client
        self.per_key = per_key
        self.per_process = per_process
        self.open = 0

    async def take(self, owner: ApiKey | None) -> Slot:
        if self.open >= self.per_process:
            full = ServiceUnavailableError(
                f"this server has {self.per_process} event streams open; try again shortly",
                retry_after=RETRY_AFTER,
            )
            full.limit = "streams"
            raise full
        slot = Slot(self, f"mediagen:streams:{owner.id if owner else 'anonymous'}")
        if await slot.renew() > self.per_key:
            await slot.release()
            refused = RateLimitedError(
                f"at most {self.per_key} event streams may be open at once per key",
                RETRY_AFTER,
            )
            refused.limit = "streams"
            raise refused
        self.open += 1
        slot.counted = True
        return slot


class Slot:
    """One open stream's place."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self.slots = slots
        self.key = key
        self.member = uuid.uuid4().hex
        self.counted = False

    async def renew(self) -> int:
        """Keep the place; how many streams of this key are open (this one included)."""
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
