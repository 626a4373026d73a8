"""Postgres restarted under an API and a worker (real processes: how their pools live through
it is what is tested) on a Postgres of the test's own, with a steady load of submits and reads
going on. While it is down every request that needs it answers 503 with Retry-After and the
code `database_unavailable`, in each surface's shape (mediagen's `{detail, code}`, `/v1`'s
problem details), never a 500 (nor while it shuts down or comes back); once it is back,
requests succeed again without restarting anything, and the jobs that were in flight finish
(their steps run again, or the sweeper dispatches them once their lease ran out)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import redis

from tests.chaos.procs import Postgres
from tests.conftest import REDIS, ROOT, TMP
from tests.db.servers import own_postgres, scratch_dir
from tests.stack import launch_worker, start_api, stop_all, wait_worker
from tests.support import Proc, wait_terminal

BODY = {"prompt": "a lighthouse in the fog", "parameters": {"width": 64, "height": 64}}
V1_BODY = {"input": {"prompt": "a lighthouse in the fog", "width": 64, "height": 64}}
IN_FLIGHT = 3


@dataclass
class Service:
    postgres: Postgres
    url: str  # the API's
    api: Proc
    worker: Proc


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with scratch_dir("mediagen-own-pg-") as root:
        server = own_postgres(root)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def service(postgres: Postgres) -> Iterator[Service]:
    """Migrated, then an API and a worker (with the sweeper's schedule, quick) on it."""
    asyncio.run(_create(postgres.dsn(), "mediagen"))
    url = postgres.dsn("mediagen").replace("postgresql://", "postgres://", 1)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": REDIS.fresh(),
        "BUILTIN_LATENCY": "1",
        "LEASE_SECONDS": "3",
        "SWEEP_INTERVAL": "1",
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "mediagen", "migrate"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    schedule = str(TMP / f"beat-restart-{os.getpid()}")
    worker = launch_worker("worker-pg-restart", env, ["-B", "-s", schedule])
    api, api_url = start_api("api-pg-restart", env)
    try:
        with contextlib.closing(redis.Redis.from_url(env["REDIS_URL"])) as broker:
            wait_worker(worker, broker)
        yield Service(postgres, api_url, api, worker)
    finally:
        stop_all([api, worker])


async def _create(admin: str, name: str) -> None:
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        yield client


def _unavailable(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    body: dict[str, object] = response.json()
    return body


class Load:
    """Submits and status reads, one after another, until stopped: every answer must be a
    success or a 503 with Retry-After."""

    def __init__(self, client: httpx.AsyncClient, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.answers: dict[int, int] = {}
        self.accepted: list[str] = []
        self.wrong: list[str] = []
        self._running = True

    async def run(self) -> None:
        while self._running:
            for method, path, body in (
                ("POST", "/api/v1/generate", BODY),
                ("GET", f"/api/v1/status/{self.job_id}", None),
            ):
                response = await self.client.request(method, path, json=body)
                self.answers[response.status_code] = self.answers.get(response.status_code, 0) + 1
                if response.status_code == 201:
                    self.accepted.append(response.json()["job_id"])
                elif response.status_code != 200 and not (
                    response.status_code == 503 and response.headers.get("retry-after")
                ):
                    self.wrong.append(f"{method} {path}: {response.status_code} {response.text}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._running = False


async def test_postgres_restart_is_503_then_heals(service: Service) -> None:
    async with _client(service) as client:
        in_flight = []
        for _ in range(IN_FLIGHT):
            created = await client.post("/api/v1/generate", json=BODY)
            assert created.status_code == 201, created.text
            in_flight.append(created.json()["job_id"])
        load = Load(client, in_flight[0])
        loading = asyncio.create_task(load.run())
        await asyncio.sleep(0.5)

        await asyncio.to_thread(service.postgres.stop)
        try:
            submit = _unavailable(await client.post("/api/v1/generate", json=BODY))
            assert submit["code"] == "database_unavailable", submit
            status = _unavailable(await client.get(f"/api/v1/status/{in_flight[0]}"))
            assert status["code"] == "database_unavailable", status
            listing = _unavailable(await client.get("/api/v1/jobs"))
            assert listing["code"] == "database_unavailable", listing
            v1 = await client.post("/v1/models/mediagen/builtin/predictions", json=V1_BODY)
            problem = _unavailable(v1)
            assert problem["type"] == "urn:mediagen:error:database_unavailable", problem
            assert problem["status"] == 503 and v1.headers["content-type"].startswith(
                "application/problem+json"
            )
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["database"]["ok"]
        finally:
            await asyncio.to_thread(service.postgres.start)

        # The same processes serve again: their pools open new connections.
        started = time.monotonic()
        while True:
            created = await client.post("/api/v1/generate", json=BODY)
            if created.status_code == 201:
                break
            assert created.status_code == 503, created.text  # never a 500 on the way back
            assert time.monotonic() - started < 20, "the API did not recover within 20 s"
            await asyncio.sleep(0.2)
        in_flight.append(created.json()["job_id"])
        assert (await client.get(f"/api/v1/status/{in_flight[0]}")).status_code == 200
        v1 = await client.post("/v1/models/mediagen/builtin/predictions", json=V1_BODY)
        assert v1.status_code == 201, v1.text

        await asyncio.sleep(0.5)
        load.stop()
        await loading
        assert not load.wrong, load.wrong[:5]
        assert load.answers.get(503) and load.answers.get(201), load.answers
        in_flight += load.accepted

        finished = [await wait_terminal(client, job_id, timeout=60) for job_id in in_flight]
        assert [job["status"] for job in finished] == ["completed"] * len(in_flight), finished
    assert service.api.popen.poll() is None and service.worker.popen.poll() is None
