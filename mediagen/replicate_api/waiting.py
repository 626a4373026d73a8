"""`Prefer: wait[=n]`: hold a create's answer until its job finished, at most n seconds.

The API process waits, never a worker: it blocks on the job's Redis event stream
(`mediagen.jobs.events`, the same one `/events` serves) and re-reads the row whenever something
was announced, or every BLOCK_SECONDS if nothing was (a lost event delays the answer, never
hides the end); with Redis failing meanwhile it polls the row with backoff.

Each wait holds a Redis connection while it blocks, so waits are counted as streams are
(`mediagen.limits.streams`), on a client and pool of their own: MAX_WAITS_PER_KEY per key
across API processes, MAX_WAITS per process. A create that finds no place (or no Redis) is
answered at once, without `Preference-Applied`, as a wait that ran out is: the prediction is
`starting` and Replicate's clients poll it. The job was made either way; refusing the answer
would only make the client create it again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.datastructures import State

from mediagen.broker import stream_key
from mediagen.errors import InvalidInputError, RateLimitedError, ServiceUnavailableError
from mediagen.jobs import repository as repo
from mediagen.jobs.models import Job
from mediagen.keys.models import ApiKey
from mediagen.limits.streams import Slot, StreamSlots, blocking_client
from mediagen.observability import metrics

log = logging.getLogger(__name__)

MAX_WAIT = 60
BLOCK_SECONDS = 2.0
RENEW_SECONDS = 20.0  # a wait renews its place this often (places last SLOT_SECONDS)
# The answer leaves this much before the wait is over, so a client whose read timeout is the
# wait itself (the Python client allows half a second more) still gets it.
MARGIN = 0.3
# `wait` or `wait=n` (n >= 1, tokens case-insensitive as RFC 7240 has them), and nothing
# else: the router states the same pattern, so what the schema admits is what is served.
PREFER_PATTERN = r"^[Ww][Aa][Ii][Tt](=0*[1-9][0-9]{0,8})?$"
_PREFER = re.compile(PREFER_PATTERN)


def parse_prefer(header: str | None) -> int | None:
    """The seconds `Prefer` asks to wait (`wait`: MAX_WAIT; `wait=n`: n, at most MAX_WAIT);
    None without the header. The route has already refused any other value (422)."""
    if header is None:
        return None
    value = header.strip()
    if not _PREFER.match(value):
        raise InvalidInputError(
            f"Prefer: {value[:50]!r} is not understood: use `wait` or `wait=n` (seconds)"
        )
    _, _, seconds = value.partition("=")
    return min(int(seconds), MAX_WAIT) if seconds else MAX_WAIT


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Waits block on a client of their own: one connection per wait (MAX_WAITS) and a few for
    taking and freeing places, so they can never take the event streams' connections."""
    settings = app.state.settings
    app.state.waits_redis = blocking_client(
        settings, "mediagen-waits", settings.max_waits, BLOCK_SECONDS
    )
    app.state.wait_slots = StreamSlots(
        app.state.waits_redis, settings.max_waits_per_key, settings.max_waits, kind="waits"
    )
    try:
        yield
    finally:
        await app.state.waits_redis.aclose()


async def until_finished(
    state: State, owner: ApiKey | None, job_id: uuid.UUID, seconds: int
) -> tuple[Job | None, bool]:
    """The job once it finished, or as it is when `seconds` (less MARGIN) have passed; and
    whether it was waited for (not when the caller has no wait place left, or Redis fails)."""
    slots: StreamSlots = state.wait_slots
    try:
        slot = await slots.take(owner)
    except (RateLimitedError, ServiceUnavailableError) as refused:
        metrics.rate_limited(refused.limit or "waits")
        return await repo.get(job_id), False
    except RedisError as exc:
        log.warning("job %s: not waited for, Redis failed (%s)", job_id, exc)
        return await repo.get(job_id), False
    try:
        return await _follow(state.waits_redis, slot, job_id, seconds), True
    finally:
        await slot.release()


async def _follow(
    client: aioredis.Redis, slot: Slot, job_id: uuid.UUID, seconds: int
) -> Job | None:
    deadline = time.monotonic() + max(seconds - MARGIN, 0.5)
    renewed = time.monotonic()
    last = "0-0"  # everything the stream holds first: an end announced before we looked
    pause = 0.05
    while True:
        job = await repo.get(job_id)
        now = time.monotonic()
        left = deadline - now
        if job is None or job.status.is_terminal or left <= 0:
            return job
        if now - renewed > RENEW_SECONDS:
            renewed = now
            with contextlib.suppress(RedisError):  # if Redis is down, it expires by itself
                await slot.renew()
        try:
            read: Any = await client.xread(  # RESP2: [[key, [(id, fields), ...]]]
                {stream_key(job_id): last}, count=100, block=int(min(left, BLOCK_SECONDS) * 1000)
            )
            if read:
                last = read[0][1][-1][0]
        except RedisError:  # no events: poll the row instead
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)
