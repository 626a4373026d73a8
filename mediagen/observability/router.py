"""`GET /metrics` on the API: the API processes' counters and the backlog, read at scrape time.

The backlog costs one small query and one Redis round trip per scrape, whatever the backlog:
the unfinished jobs by state are summed from `job_counters` (16 rows per API key, kept by the
transitions; see mediagen.jobs.models.JobCounter), the oldest pending job is the oldest of the
heads of the queue index's priority bands (a sorted set), and live workers are counted from
their heartbeats.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily

from mediagen import db
from mediagen.broker import HEARTBEAT_TTL, QUEUE_INDEX, WORKERS
from mediagen.jobs.dispatch import BAND, order_created_micros
from mediagen.jobs.states import Priority
from mediagen.observability import metrics

router = APIRouter()
READ_TIMEOUT = 2.0  # a scrape answers, without the backlog, rather than hang on a store

_BY_STATE = (
    "SELECT coalesce(sum(pending), 0)::bigint AS pending, "
    "coalesce(sum(processing), 0)::bigint AS processing, "
    "coalesce(sum(retrying), 0)::bigint AS retrying FROM job_counters"
)


async def _by_state() -> dict[str, int]:
    row = await (await db.pool()).fetchrow(_BY_STATE)
    return {key: int(value) for key, value in dict(row or {}).items()}


async def _from_redis(client: aioredis.Redis) -> tuple[float | None, int]:
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(WORKERS, now - HEARTBEAT_TTL, "+inf")
        for band in range(len(Priority)):  # the head of each priority's band
            pipe.zrangebyscore(
                QUEUE_INDEX, band * BAND, f"({(band + 1) * BAND}", 0, 1, withscores=True
            )
        workers, *heads = await pipe.execute()
    created = [order_created_micros(head[0][1]) for head in heads if head]
    oldest = now - min(created) / 1e6 if created else None
    return oldest, int(workers)


async def backlog(client: aioredis.Redis) -> list[GaugeMetricFamily]:
    """The backlog gauges; a store that does not answer leaves its gauges out of the scrape
    (an absent series, which alerts can tell from a zero)."""
    by_state, from_redis = await asyncio.gather(
        asyncio.wait_for(_by_state(), READ_TIMEOUT),
        asyncio.wait_for(_from_redis(client), READ_TIMEOUT),
        return_exceptions=True,
    )
    families = metrics.backlog_families(
        by_state if isinstance(by_state, dict) else {},
        *(from_redis if isinstance(from_redis, tuple) else (None, 0)),
    )
    keep = []
    if isinstance(by_state, dict):
        keep.append(families[0])
    if isinstance(from_redis, tuple):
        keep += families[1:]
    return keep


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    """Prometheus text format (METRICS_TOKEN, when set, as a bearer token)."""
    settings = request.app.state.settings
    if not metrics.authorized(request.headers.get("authorization"), settings.metrics_token):
        return PlainTextResponse(
            "metrics need the bearer token (METRICS_TOKEN)\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = await metrics.render(await backlog(request.app.state.redis))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
