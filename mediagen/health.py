"""`GET /api/v1/health`: database, broker, workers and storage, each checked for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mediagen import __version__, db
from mediagen.broker import HEARTBEAT_TTL, WORKERS

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 3.0


class Check(BaseModel):
    ok: bool
    latency_ms: float
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    checks: dict[str, Check]


async def _timed(probe: Callable[[], Awaitable[str | None]]) -> Check:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT)
        ok = True
    except Exception as exc:
        detail, ok = (str(exc) or type(exc).__name__), False
    return Check(ok=ok, latency_ms=round((time.perf_counter() - started) * 1000, 2), detail=detail)


@router.get(
    "/health",
    response_model=Health,
    summary="Service health",
    responses={503: {"model": Health, "description": "A dependency is down."}},
)
async def health(request: Request) -> Any:
    """200 when the database, broker, at least one worker and the storage all answer; 503 with
    each check's detail otherwise."""
    state = request.app.state
    redis_client: aioredis.Redis = state.redis

    async def database() -> None:
        await db.ping()

    async def broker() -> None:
        await redis_client.ping()

    async def workers() -> str:
        alive = await redis_client.zcount(WORKERS, time.time() - HEARTBEAT_TTL, "+inf")
        if not alive:
            raise RuntimeError(f"no worker has reported in the last {HEARTBEAT_TTL} s")
        return f"{alive} worker process(es) alive"

    async def storage() -> str:
        await state.storage.check()
        return str(state.storage.name)

    results = await asyncio.gather(
        _timed(database), _timed(broker), _timed(workers), _timed(storage)
    )
    checks = dict(zip(("database", "broker", "workers", "storage"), results, strict=True))
    healthy = all(c.ok for c in checks.values())
    body = Health(status="ok" if healthy else "unavailable", version=__version__, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)
