"""Probes: `/livez` (the process answers; no I/O), `/readyz` (this API can accept jobs: the
database and the broker answer), and `/api/v1/health`, the detailed report (database, broker,
live workers, storage), each dependency checked for real.

Readiness leaves out the workers and the storage on purpose: an API that can record a job and
queue it is worth sending requests to even while no worker runs (the jobs wait, the sweeper
dispatches them) or the storage is out (jobs retry), and a load balancer that took every API
out of rotation for a worker outage would turn a backlog into an outage. Workers have probes of
their own (`mediagen.observability.exporter`, `mediagen worker-check`).

What a failing dependency said (hosts, paths, bucket names) is shown only to a caller with a
valid API key or calling from this machine; anyone else sees which checks failed, not why.
The storage check writes and deletes a probe object, so its answer is kept for
STORAGE_CHECK_SECONDS: probing the health endpoint cannot turn into a stream of writes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mediagen import __version__, db
from mediagen.broker import HEARTBEAT_TTL, WORKERS
from mediagen.errors import MediagenError
from mediagen.storage.base import Storage

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 3.0
STORAGE_CHECK_SECONDS = 30.0


class Check(BaseModel):
    ok: bool
    latency_ms: float
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    checks: dict[str, Check]


class Live(BaseModel):
    status: Literal["ok"]


class StorageProbe:
    """The storage check, done at most once per STORAGE_CHECK_SECONDS."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._last: tuple[float, str | None, BaseException | None] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] > STORAGE_CHECK_SECONDS:
                try:
                    await self.storage.check()
                    self._last = (now, str(self.storage.name), None)
                except Exception as exc:
                    self._last = (now, None, exc)
            _, name, error = self._last
        if error is not None:
            raise error
        return name or ""


async def _timed(probe: Callable[[], Awaitable[str | None]], detailed: bool) -> Check:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT)
        ok = True
    except Exception as exc:
        detail, ok = (str(exc) or type(exc).__name__), False
    latency = round((time.perf_counter() - started) * 1000, 2)
    return Check(ok=ok, latency_ms=latency, detail=detail if detailed or ok else None)


async def _detailed(request: Request) -> bool:
    """A caller with a valid key, or on this machine, may read why a check failed."""
    host = request.client.host if request.client else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        return False
    try:
        await request.app.state.keys.authenticate(secret)
    except MediagenError:
        return False
    except Exception:  # the database is down: no key can be checked
        return False
    return True


async def _report(request: Request, everything: bool) -> JSONResponse:
    """The checks (the database and the broker; with `everything`, live workers and the
    storage too): 200 when all pass, 503 naming the ones that did not."""
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

    probes: dict[str, Callable[[], Awaitable[str | None]]] = {
        "database": database,
        "broker": broker,
    }
    if everything:
        probes.update(workers=workers, storage=state.storage_probe)
    detailed = await _detailed(request)
    results = await asyncio.gather(*(_timed(probe, detailed) for probe in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    healthy = all(c.ok for c in checks.values())
    body = Health(status="ok" if healthy else "unavailable", version=__version__, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)


_READY: dict[str, Any] = {
    "response_model": Health,
    "responses": {503: {"model": Health, "description": "A dependency is down."}},
}


@router.get("/livez", response_model=Live, summary="Liveness: the process answers")
async def livez() -> Live:
    """No I/O at all: 200 while the process can answer. For a liveness probe."""
    return Live(status="ok")


@router.get("/readyz", summary="Readiness: this API can accept jobs", **_READY)
async def readyz(request: Request) -> Any:
    """200 when the database and the broker answer (a job can be recorded and queued); 503
    otherwise. Workers and storage are not checked here (`/api/v1/health` reports them). Why a
    check failed is shown only with a valid key or from this machine."""
    return await _report(request, everything=False)


@router.get("/api/v1/health", summary="Service health: every dependency", **_READY)
async def health(request: Request) -> Any:
    """200 when the database, the broker, at least one live worker and the storage all answer;
    503 otherwise, naming the failed checks (why, only with a valid key or from this
    machine)."""
    return await _report(request, everything=True)
