"""Per-key limits on `POST /generate`: a request rate (Redis, fixed one-minute windows) and a
maximum of unfinished jobs (Postgres). Both answer 429 with Retry-After.

The rate counter fails open: if Redis is down the job is still accepted (it is durable in
Postgres and the sweeper dispatches it), because refusing work is worse than a missed count.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from mediagen.config import Settings
from mediagen.errors import RateLimitedError
from mediagen.jobs.models import Job
from mediagen.jobs.states import UNFINISHED
from mediagen.keys.models import ApiKey

log = logging.getLogger(__name__)
WINDOW = 60
IN_FLIGHT_RETRY_AFTER = 5


async def enforce(owner: ApiKey | None, settings: Settings, redis: aioredis.Redis) -> None:
    scope = str(owner.id) if owner else "anonymous"
    if settings.rate_limit_per_minute:
        now = time.time()
        window = int(now // WINDOW)
        key = f"mediagen:rate:{scope}:{window}"
        try:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW * 2)
                count, _ = await pipe.execute()
        except Exception as exc:  # fail open, see module docstring
            log.warning("rate limit not checked (Redis: %s)", exc)
        else:
            if count > settings.rate_limit_per_minute:
                retry_after = max(1, int((window + 1) * WINDOW - now))
                raise RateLimitedError(
                    f"more than {settings.rate_limit_per_minute} jobs per minute; "
                    f"retry in {retry_after} s",
                    retry_after,
                )
    if settings.max_jobs_in_flight:
        unfinished = await Job.filter(
            api_key_id=owner.id if owner else None, status__in=list(UNFINISHED)
        ).count()
        if unfinished >= settings.max_jobs_in_flight:
            raise RateLimitedError(
                f"{unfinished} jobs are still unfinished (limit {settings.max_jobs_in_flight})",
                IN_FLIGHT_RETRY_AFTER,
            )
