"""API keys as an API process sees them: looked up once, then served from memory.

Authentication would otherwise cost a query on every request, and `AUTH_REQUIRED=auto` another
("was any key ever made?"). Both answers are kept for KEY_CACHE_SECONDS (negative ones too, so a
stream of bad keys cannot hammer the database). A change does not wait for that: `mediagen keys
create|revoke|set-priority` publishes on the Redis channel `mediagen:keys`, and every API process,
subscribed to it, drops its cache at once (a key's priority ceiling is read from the cached row,
so a new ceiling applies at once, within KEY_CACHE_SECONDS at worst). Nothing is cached while
the subscription is down, and the cache is dropped whenever it (re)starts, so a message lost
with a broken connection can matter only until the break is noticed (PING_EVERY, a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis

from mediagen.errors import AuthenticationError
from mediagen.keys.models import ApiKey
from mediagen.keys.service import any_key_made, find_active_key, hash_key

log = logging.getLogger(__name__)

CHANNEL = "mediagen:keys"
MAX_ENTRIES = 10_000
RESUBSCRIBE_DELAY = 1.0
PING_EVERY = 5.0  # a dead subscription is noticed within this (the client's timeout is longer)


class KeyCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._keys: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()
        self._any: tuple[bool, float] | None = None
        self._generation = 0  # bumped by every clear: a lookup that raced one is not kept
        self.subscribed = False  # caching only while changes can reach us

    def clear(self) -> None:
        self._keys.clear()
        self._any = None
        self._generation += 1

    async def authenticate(self, secret: str) -> ApiKey:
        digest = hash_key(secret)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[1] > now:
            key = cached[0]
        else:
            generation = self._generation
            key = await find_active_key(digest)
            if self.subscribed and generation == self._generation:
                self._keys[digest] = (key, now + self.ttl)
                self._keys.move_to_end(digest)
                while len(self._keys) > MAX_ENTRIES:
                    self._keys.popitem(last=False)
        if key is None:
            raise AuthenticationError("invalid or revoked API key")
        return key

    async def required(self) -> bool:
        """Whether AUTH_REQUIRED=auto requires a key: once any key was ever made."""
        now = time.monotonic()
        if self._any is not None and self._any[1] > now:
            return self._any[0]
        generation = self._generation
        found = await any_key_made()
        if self.subscribed and generation == self._generation:
            self._any = (found, now + self.ttl)
        return found

    async def follow(self, client: aioredis.Redis) -> None:
        """Drop the cache whenever a key changes anywhere (runs for the life of the process).

        `client` must have a socket timeout longer than PING_EVERY."""
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.clear()  # anything cached before now may have missed a change
                self.subscribed = True
                while True:
                    message = await pubsub.get_message(timeout=PING_EVERY)
                    if message is None:
                        await pubsub.ping()  # raises if the connection is gone
                    elif message.get("type") == "message":
                        self.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("key changes not followed (%s); keys are read from the database", exc)
            finally:
                self.subscribed = False
                self.clear()
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RESUBSCRIBE_DELAY)


async def publish_change(client: aioredis.Redis) -> int:
    """Tell every API process that keys changed; the number of processes that heard it."""
    return int(await client.publish(CHANNEL, "changed"))
