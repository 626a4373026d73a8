"""A Cog server that reports its worker crashed (it is stopping, or died) is set aside: the slot
its prediction frees does not go at once to the next job, whose PUT would meet a refused
connection and cost it an attempt; the crashed job's new attempt waits until a health check
finds the server good again.

The Cog server is a fake one (tests/fakes/cog.py) that stays up and answers READY, so only the
crash report can keep work from it; the application and its worker run in this process, with
no sweeper but the one the test runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from mediagen.catalog import Endpoint
from mediagen.scheduling import pool_of
from mediagen.scheduling.queues import DOWN
from tests.fakes.cog import FakeCog
from tests.stack import InProcess, in_process

MODEL = "acme/fragile"


@dataclass
class Fragile:
    stack: InProcess
    client: httpx.AsyncClient
    fake: FakeCog


@pytest.fixture
async def fragile(database: str, tmp_path: Any) -> AsyncIterator[Fragile]:
    with FakeCog() as fake:
        models = tmp_path / "models.toml"
        models.write_text(f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 600\n'
                          f'[[models."{MODEL}".endpoints]]\nurl = "{fake.url}"\nslots = 1\n')
        env = {"MODELS_FILE": str(models), "PUBLIC_BASE_URL": "http://127.0.0.1:9",
               "COG_WEBHOOK_SECRET": "cog-crash-secret", "POLL_INTERVAL": "0.2",
               "LOCAL_STORAGE_PATH": str(tmp_path / "media")}
        async with in_process(env, worker=True) as stack:
            yield Fragile(stack, stack.client(), fake)


async def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.05)


async def test_a_server_whose_worker_crashed_gets_no_work_until_it_is_healthy(
        fragile: Fragile) -> None:
    client, fake = fragile.client, fragile.fake
    created = await client.post("/api/v1/generate", json={
        "prompt": "a fox", "model": MODEL, "parameters": {"width": 64}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]

    async def recorded() -> bool:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return bool(fake.created) and bool(job["prediction_id"])

    await _until(recorded, 10, "the prediction created and recorded")
    (given, body), = fake.created.items()
    crashed = await client.post(urlsplit(body["webhook"]).path, json={
        "id": given, "status": "failed", "error": "Worker crashed: control channel closed"})
    assert crashed.status_code == 200, crashed.text

    # The job runs again (a counted retry), but not on the server that crashed: it waits.
    async def retried() -> bool:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return job["retry_count"] == 1 and job["status"] in ("pending", "retrying")

    await _until(retried, 10, "a new attempt waiting")
    await asyncio.sleep(1.5)  # a start that took the freed slot would have PUT by now
    assert len(fake.created) == 1, list(fake.created)
    assert fragile.stack.worker is not None
    redis = fragile.stack.worker.outbox.client
    assert await redis.exists(DOWN + pool_of(Endpoint(fake.url, 1)))

    # The sweeper's health check finds it READY: it gets work again, and the job completes.
    assert fragile.stack.worker is not None
    await fragile.stack.worker.worker.sweep()

    async def put_again() -> bool:
        return len(fake.created) == 2

    await _until(put_again, 10, "the new attempt sent to the server once it is healthy")
    job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "processing" and job["attempts"] == 2, job
    canceled = await client.post(f"/api/v1/jobs/{job_id}/cancel")  # (nothing left running)
    assert canceled.status_code == 200, canceled.text
