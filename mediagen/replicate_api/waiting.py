"""`Prefer: wait[=n]`: hold a create's answer until its job finished, at most n seconds.

The API process waits, never a worker: it blocks on the job's Redis event stream
(`mediagen.jobs.events`, the same one `/events` serves) and re-reads the row whenever something
was announced, or every BLOCK_SECONDS if nothing was (a lost event delays the answer, never
hides the end); with Redis unreachable it polls the row with backoff."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from redis.exceptions import RedisError
from starlette.datastructures import State

from mediagen.broker import stream_key
from mediagen.errors import InvalidInputError
from mediagen.jobs import repository as repo
from mediagen.jobs.models import Job

MAX_WAIT = 60
BLOCK_SECONDS = 2.0
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


async def until_finished(state: State, job_id: uuid.UUID, seconds: int) -> Job | None:
    """The job once it finished, or as it is when `seconds` (less MARGIN) have passed."""
    deadline = time.monotonic() + max(seconds - MARGIN, 0.5)
    client = state.events_redis
    last = "0-0"  # everything the stream holds first: an end announced before we looked
    pause = 0.05
    while True:
        job = await repo.get(job_id)
        left = deadline - time.monotonic()
        if job is None or job.status.is_terminal or left <= 0:
            return job
        try:
            read = await client.xread(
                {stream_key(job_id): last}, count=100, block=int(min(left, BLOCK_SECONDS) * 1000)
            )
            if read:
                last = read[0][1][-1][0]
        except RedisError:  # no events: poll the row instead
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)
