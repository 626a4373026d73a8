"""Per-key request rates: fixed one-minute windows, counted in this process and summed across
processes in Redis, answering 429 with Retry-After.

A request is admitted or refused from memory, with no round trip: each process counts what it
admitted and, at most SYNC_INTERVAL later, adds that to the window's shared counter in Redis
(INCRBY), learning in the same reply what every process admitted. A single API process is
therefore exact; N processes together may admit what the others admitted within one
SYNC_INTERVAL beyond the limit. Redis being down makes the count per process (it fails open:
a job refused for a missed count is worse than one too many accepted; the job is durable in
Postgres either way).

The other per-key limit, unfinished jobs, is enforced by the statement that inserts the job
(`repository.insert`, against a counter kept with the transitions), so it is exact under
concurrency and costs no query of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from mediagen.config import Settings
from mediagen.errors import RateLimitedError
from mediagen.keys.models import ApiKey

log = logging.getLogger(__name__)
WINDOW = 60
SYNC_INTERVAL = 0.1
IN_FLIGHT_RETRY_AFTER = 5


@dataclass
class _Window:
    number: int
    seen: int = 0  # admitted by every process, as Redis last said (ours included)
    unsynced: int = 0  # admitted here since then


class RateLimiter:
    """Counts one scope's (API key's) requests per minute; raises RateLimitedError past `limit`."""

    def __init__(self, redis: aioredis.Redis, limit: int, what: str = "jobs") -> None:
        self.redis = redis
        self.limit = limit
        self.what = what
        self._windows: dict[str, _Window] = {}
        self._syncing: asyncio.Task[None] | None = None

    def check(self, owner: ApiKey | None) -> None:
        if not self.limit:
            return
        scope = str(owner.id) if owner else "anonymous"
        now = time.time()
        number = int(now // WINDOW)
        window = self._windows.get(scope)
        if window is None or window.number != number:
            window = self._windows[scope] = _Window(number)
        if window.seen + window.unsynced >= self.limit:
            # Rounded up: a client that waits exactly Retry-After must find the new window.
            retry_after = max(1, math.ceil((number + 1) * WINDOW - now))
            refused = RateLimitedError(
                f"more than {self.limit} {self.what} per minute; retry in {retry_after} s",
                retry_after,
            )
            refused.limit = "submissions" if self.what == "jobs" else self.what
            raise refused
        window.unsynced += 1
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.get_running_loop().create_task(self._sync())

    def _key(self, scope: str, number: int) -> str:
        return f"mediagen:rate:{self.what}:{scope}:{number}"

    async def _sync(self) -> None:
        """Add what this process admitted to the shared counters; learn the totals."""
        await asyncio.sleep(SYNC_INTERVAL)
        current = int(time.time() // WINDOW)
        for scope, window in list(self._windows.items()):
            if window.number < current - 1:
                del self._windows[scope]  # a window long gone: nothing will ask about it
        pending = [(s, w, w.unsynced) for s, w in self._windows.items() if w.unsynced]
        if not pending:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for scope, window, count in pending:
                    pipe.incrby(self._key(scope, window.number), count)
                    pipe.expire(self._key(scope, window.number), WINDOW * 2)
                replies = await pipe.execute()
        except Exception as exc:  # fail open (module docstring): keep counting locally
            log.warning("rate limit counts not shared (Redis: %s)", exc)
            for _, window, count in pending:
                window.seen += count
                window.unsynced -= count
            return
        for (_, window, count), total in zip(pending, replies[::2], strict=True):
            window.seen = max(window.seen + count, int(total))
            window.unsynced -= count

    async def close(self) -> None:
        if self._syncing is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._syncing


def in_flight_exceeded(settings: Settings, batch: int | None = None) -> RateLimitedError:
    """The answer when the insert found no room for the job (or the `batch` of that many
    jobs) within the owner's MAX_JOBS_IN_FLIGHT unfinished jobs."""
    if batch is None:
        message = (
            f"{settings.max_jobs_in_flight} jobs are still unfinished "
            f"(limit {settings.max_jobs_in_flight})"
        )
    else:
        message = (
            f"the batch's {batch} jobs do not fit within the limit of "
            f"{settings.max_jobs_in_flight} unfinished jobs; nothing was created"
        )
    refused = RateLimitedError(message, IN_FLIGHT_RETRY_AFTER)
    refused.limit = "in_flight"
    return refused
