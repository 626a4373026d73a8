"""`GET /metrics` on the API: the API processes' counters and the backlog, read at scrape time.

The backlog costs two small queries and two Redis round trips per scrape, bounded whatever the
backlog: the unfinished jobs by state are summed from `job_counters` (16 rows per API key, kept
by the transitions; see mediagen.jobs.models.JobCounter), and live workers are counted from
their heartbeats.

Per model (the autoscaling signals): the pending jobs and the oldest one's age are read from a
partial index of the pending jobs by model and creation time (migration 0018), not counted by
the transitions: a skip scan finds the models with pending jobs (MAX_MODELS at most), the first
entry of each is its oldest, and its count stops at PENDING_COUNTED, so a scrape reads at most
models x PENDING_COUNTED index entries however many jobs wait or the table holds (the exact
total stays `mediagen_jobs{status="pending"}`). Every model of the catalog is shown, at 0 when
none of its jobs waits, so an autoscaler reads 0 rather than nothing; the oldest of all is the
oldest of the models'. Busy and total slots come from the scheduler in Redis
(`mediagen.scheduling.Queues.usage`), for every model with a limit (a Cog model's servers, or a
`concurrency`).
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
from mediagen.broker import HEARTBEAT_TTL, WORKERS
from mediagen.catalog import Catalog
from mediagen.config import Settings
from mediagen.observability import metrics
from mediagen.scheduling import Queues

router = APIRouter()
READ_TIMEOUT = 2.0  # a scrape answers, without the backlog, rather than hang on a store

_BY_STATE = (
    "SELECT coalesce(sum(pending), 0)::bigint AS pending, "
    "coalesce(sum(processing), 0)::bigint AS processing, "
    "coalesce(sum(retrying), 0)::bigint AS retrying FROM job_counters"
)


# $1: MAX_MODELS, $2: PENDING_COUNTED. A skip scan of the partial index of pending jobs by
# (model, created_at): each step's first entry is the next model and its oldest job (one probe
# per model), then the jobs that named none; per model, a count that stops at $2 (in the
# index's order, so the planner walks the index: pending jobs are the newest rows, at the end
# of the table, where a sequential scan would come last).
_BY_MODEL = """
WITH RECURSIVE heads(model, created_at, n) AS (
    (SELECT model, created_at, 1 FROM jobs WHERE status = 'pending' AND model IS NOT NULL
     ORDER BY model, created_at LIMIT 1)
    UNION ALL
    SELECT next.model, next.created_at, heads.n + 1 FROM heads, LATERAL (
        SELECT j.model, j.created_at FROM jobs j
        WHERE j.status = 'pending' AND j.model > heads.model
        ORDER BY j.model, j.created_at LIMIT 1) AS next
    WHERE heads.n < $1
), unnamed AS (
    SELECT created_at FROM jobs WHERE status = 'pending' AND model IS NULL
    ORDER BY model, created_at LIMIT 1
)
SELECT heads.model, extract(epoch FROM clock_timestamp() - heads.created_at)::float8 AS age,
    (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.status = 'pending'
     AND j.model = heads.model ORDER BY j.model, j.created_at LIMIT $2) AS counted) AS pending
FROM heads
UNION ALL
SELECT NULL, extract(epoch FROM clock_timestamp() - unnamed.created_at)::float8,
    (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.status = 'pending'
     AND j.model IS NULL ORDER BY j.model, j.created_at LIMIT $2) AS counted)
FROM unnamed
"""


async def _by_state() -> dict[str, int]:
    row = await (await db.pool()).fetchrow(_BY_STATE)
    return {key: int(value) for key, value in dict(row or {}).items()}


async def _by_model(catalog: Catalog) -> dict[str, metrics.ModelBacklog]:
    """Each model's pending jobs and oldest one's age: those of the catalog (0 when none
    waits), and any other with jobs waiting (jobs that named no model: DEFAULT_MODEL)."""
    found = {route.name: metrics.ModelBacklog(0, 0.0) for route in catalog.models() if route.listed}
    rows = await (await db.pool()).fetch(_BY_MODEL, metrics.MAX_MODELS, metrics.PENDING_COUNTED)
    for row in rows:
        if row["pending"]:
            name = row["model"] if row["model"] is not None else metrics.DEFAULT_MODEL
            found[name] = metrics.ModelBacklog(int(row["pending"]), float(row["age"] or 0.0))
    return found


async def _slots(
    client: aioredis.Redis, catalog: Catalog, settings: Settings
) -> dict[str, tuple[int, int]]:
    return await Queues(settings, catalog, client).usage(catalog.models())


async def _workers(client: aioredis.Redis) -> int:
    return int(await client.zcount(WORKERS, time.time() - HEARTBEAT_TTL, "+inf"))


async def backlog(
    client: aioredis.Redis, catalog: Catalog, settings: Settings
) -> list[GaugeMetricFamily]:
    """The backlog gauges; a store that does not answer leaves its gauges out of the scrape
    (an absent series, which alerts can tell from a zero)."""
    by_state, workers, by_model, used = await asyncio.gather(
        asyncio.wait_for(_by_state(), READ_TIMEOUT),
        asyncio.wait_for(_workers(client), READ_TIMEOUT),
        asyncio.wait_for(_by_model(catalog), READ_TIMEOUT),
        asyncio.wait_for(_slots(client, catalog, settings), READ_TIMEOUT),
        return_exceptions=True,
    )
    return metrics.backlog_families(
        by_state if isinstance(by_state, dict) else None,
        workers if isinstance(workers, int) else None,
        by_model if isinstance(by_model, dict) else None,
        used if isinstance(used, dict) else None,
    )


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
    state = request.app.state
    body = await metrics.render(await backlog(state.redis, state.catalog, settings))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
