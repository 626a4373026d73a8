"""A Cog prediction that ends before the worker has recorded it: the server sends the terminal
webhook before it even answers the PUT (a near-instant model does nearly that), so the API
finds the job without its prediction id and sends no poll. The worker, once it has recorded
the id, sees the record the webhook left and finishes the job at once, not a poll interval
(POLL_INTERVAL, set long here) later.

The Cog server is a fake one (tests/fakes/cog.py) whose PUT first delivers the webhook to the
application and waits for its answer; the application and its worker run in this process."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.cog import FakeCog
from tests.stack import InProcess, in_process

MODEL = "acme/instant"
POLL_INTERVAL = 10.0
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@dataclass
class Instant:
    stack: InProcess
    client: httpx.AsyncClient
    answers: list[str] = field(default_factory=list)  # what the API said to each webhook


@pytest.fixture(scope="module")
async def instant(database: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Instant]:
    tmp = tmp_path_factory.mktemp("cog-webhooks")
    loop = asyncio.get_running_loop()
    holder: list[Instant] = []

    def done_before_the_reply(given: str, body: dict[str, Any]) -> None:
        """(The fake's thread.) Deliver the terminal webhook through the application, on the
        test's loop, and wait for its answer before the PUT is answered."""
        payload = {"id": given, "status": "succeeded", "metrics": {"predict_time": 0.001},
                   "output": "data:image/png;base64," + base64.b64encode(PNG).decode()}
        path = urlsplit(body["webhook"]).path
        sent = asyncio.run_coroutine_threadsafe(holder[0].client.post(path, json=payload), loop)
        reply = sent.result(timeout=30)
        holder[0].answers.append(reply.json()["status"] if reply.status_code == 200
                                 else f"HTTP {reply.status_code}")

    with FakeCog(on_put=done_before_the_reply) as fake:
        models = tmp / "models.toml"
        models.write_text(f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 600\n'
                          f'[[models."{MODEL}".endpoints]]\nurl = "{fake.url}"\nslots = 1\n')
        env = {"MODELS_FILE": str(models), "PUBLIC_BASE_URL": "http://127.0.0.1:9",
               "COG_WEBHOOK_SECRET": "cog-webhooks-secret", "POLL_INTERVAL": str(POLL_INTERVAL),
               "LOCAL_STORAGE_PATH": str(tmp / "media")}
        async with in_process(env, worker=True) as stack:
            holder.append(Instant(stack, stack.client()))
            yield holder[0]


async def test_a_webhook_faster_than_the_record_finishes_the_job_at_once(
        instant: Instant) -> None:
    began = time.monotonic()
    ids = []
    for n in range(3):  # one slot: each starts when the one before has reported its end
        created = await instant.client.post("/api/v1/generate", json={
            "prompt": f"a quick fox {n}", "model": MODEL, "parameters": {"width": 64}})
        assert created.status_code == 201, created.text
        ids.append(created.json()["job_id"])
    jobs: list[dict[str, Any]] = []
    while time.monotonic() - began < POLL_INTERVAL:
        jobs = [(await instant.client.get(f"/api/v1/jobs/{i}")).json() for i in ids]
        if all(job["status"] == "completed" for job in jobs):
            break
        await asyncio.sleep(0.02)
    # The race happened: each webhook found its job without the prediction recorded yet.
    assert instant.answers == ["recorded"] * 3, instant.answers
    assert [job["status"] for job in jobs] == ["completed"] * 3, jobs
    assert time.monotonic() - began < POLL_INTERVAL / 2
    assert all(len(job["outputs"]) == 1 for job in jobs), jobs
