"""Health reports each dependency for real; a dead broker is a 503 that says so, and a job
submitted while the broker is down is kept and dispatched by the sweeper later. Readiness
(`/readyz`) is whether this API can accept jobs: the database and the broker, not the workers."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from mediagen.config import get_settings
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.states import JobStatus
from mediagen.jobs.sweeper import sweep
from mediagen.providers.registry import create_provider
from mediagen.storage import create_storage
from tests.conftest import REDIS_URL
from tests.stack import app
from tests.support import free_port, wait_terminal
from tests.test_secrets import PASSWORDS, VALUES


async def test_health_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "workers", "storage"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "worker process(es) alive" in body["checks"]["workers"]["detail"]


async def test_ready_without_workers_but_health_says_none_is_alive(
    client: httpx.AsyncClient,
) -> None:
    async with app() as alone:  # a Redis database of its own: no worker ever beat there
        ready = await alone.get("/readyz")
        health = await alone.get("/api/v1/health")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "broker"}
    assert health.status_code == 503
    checks = health.json()["checks"]
    assert not checks["workers"]["ok"] and checks["database"]["ok"] and checks["broker"]["ok"]


async def test_broker_down_health_503_and_job_kept(client: httpx.AsyncClient) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with app({"REDIS_URL": dead_redis}) as broken:
        health = await broken.get("/api/v1/health")
        assert health.status_code == 503
        checks = health.json()["checks"]
        assert checks["database"]["ok"] and not checks["broker"]["ok"]
        assert not checks["workers"]["ok"]
        assert checks["broker"]["detail"]

        started = time.monotonic()
        created = await broken.post("/api/v1/generate",
                                    json={"prompt": "kept while redis was down",
                                          "parameters": {"width": 64, "height": 64}})
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert time.monotonic() - started < 10  # a dead broker must not hang the client
    job = await Job.get(id=job_id)
    assert job.status is JobStatus.PENDING and job.dispatched_at is None

    # The sweeper (here run by hand, as beat would) finds it and it completes on the real worker.
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox

    settings = get_settings()
    outbox = Outbox(aioredis.from_url(REDIS_URL))
    pipeline = Pipeline(settings, create_provider(settings), create_storage(settings), outbox)
    try:
        assert await sweep(pipeline) >= 1
    finally:
        await outbox.close()
        await outbox.client.aclose()
    assert (await wait_terminal(client, job_id))["status"] == "completed"


async def test_health_and_logs_show_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    """A broker that does not answer is reported (to a caller on this machine) with why, and
    its URL's password is not part of it; nor is any secret in what the API logged."""
    env = {name.upper(): value for name, value in VALUES.items()
           if name not in ("database_url", "redis_sentinel_password")}
    env["REDIS_URL"] = f"redis://:redis-pass-91bc@127.0.0.1:{free_port()}/0"
    env["REPLICATE_API_TOKEN"] = ""  # the built-in generator: nothing is called
    with caplog.at_level(logging.DEBUG):
        async with app(env) as client:
            health = await client.get("/api/v1/health")
            metrics = await client.get("/metrics")
    assert health.status_code == 503
    assert health.json()["checks"]["broker"]["detail"]
    assert metrics.status_code == 401  # the token from the environment is in force
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (health.text, logged):
        assert not [p for p in PASSWORDS if p in text]
