"""The bare-stack baseline of `make bench-api`: the least a submit and a status read can cost.

Starlette + asyncpg + redis.asyncio + orjson, and nothing else: `POST /api/v1/generate` parses
the JSON body, does one INSERT into the same `jobs` table mediagen uses (same indexes, so the
same write cost) and one LPUSH of a small message, and answers 201; `GET /api/v1/status/{id}`
does one SELECT by primary key. No validation, no authentication, no limits, no events, and no
reset query when a connection returns to the pool: what is left when a service does only its
essential I/O, one round trip to each server.

    BENCH_DATABASE_URL=postgresql://... BENCH_REDIS_URL=redis://... \
        uvicorn bench.baseline_app:app --port 8100
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

INSERT = """
INSERT INTO jobs (id, status, prompt, parameters, provider, outputs, attempt, retry_count,
                  created_at, updated_at)
VALUES ($1, 'pending', $2, $3::jsonb, 'builtin', '[]'::jsonb, 0, 0, now(), now())
"""
SELECT = """
SELECT id, status, result_key, created_at, updated_at, retry_count FROM jobs WHERE id = $1
"""


async def _keep_session(connection: asyncpg.Connection) -> None:
    return None


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def generate(request: Request) -> Response:
    body = orjson.loads(await request.body())
    job_id = uuid.uuid4()
    params = orjson.dumps(body.get("parameters") or {}).decode()
    await request.app.state.pool.execute(INSERT, job_id, body["prompt"], params)
    await request.app.state.redis.lpush("bench:baseline", str(job_id))
    return _json({"job_id": str(job_id), "status": "pending",
                  "message": f"Job created successfully. Use job ID {job_id} to check status."},
                 201)


async def status(request: Request) -> Response:
    row = await request.app.state.pool.fetchrow(SELECT, uuid.UUID(request.path_params["job_id"]))
    if row is None:
        return _json({"detail": "not found"}, 404)
    return _json({"job_id": str(row["id"]), "status": row["status"],
                  "result_url": row["result_key"], "created_at": row["created_at"].isoformat(),
                  "updated_at": row["updated_at"].isoformat(), "retry_count": row["retry_count"]})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Without asyncpg's reset query on release (a second round trip per request), as mediagen.
    app.state.pool = await asyncpg.create_pool(os.environ["BENCH_DATABASE_URL"], min_size=1,
                                               max_size=10, reset=_keep_session)
    app.state.redis = aioredis.from_url(os.environ["BENCH_REDIS_URL"])
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await app.state.pool.close()


app = Starlette(
    routes=[Route("/api/v1/generate", generate, methods=["POST"]),
            Route("/api/v1/status/{job_id}", status)],
    lifespan=lifespan,
)
