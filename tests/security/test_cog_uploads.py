"""Cog servers' file outputs on their way in: an upload needs its own prediction's token (the
shared upload URL alone stores nothing), its bytes must be what it says it is, and what is
staged for a prediction that will never use it is swept away.

The Cog server is a fake one (tests/fakes/cog.py) that accepts predictions and never runs them:
the test plays its uploads and webhooks with what mediagen gave it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediagen.jobs.sweeper import sweep
from mediagen.providers.cog import ids
from mediagen.providers.cog import outputs as cog_outputs
from tests.fakes.cog import FakeCog
from tests.stack import InProcess, in_process
from tests.support import wait_terminal

MODEL = "acme/fox"
SHARED = "the-shared-upload-token"
SECRET = "cog-uploads-webhook-secret"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
HTML = b"<!doctype html><html><script>alert(document.cookie)</script></html>" + b" " * 64


@dataclass
class Cog:
    stack: InProcess
    client: httpx.AsyncClient
    fake: FakeCog
    media: Path


@pytest.fixture(scope="module")
async def cogs(database: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cog]:
    tmp = tmp_path_factory.mktemp("cog-uploads")
    with FakeCog() as fake:
        models = tmp / "models.toml"
        models.write_text(f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 600\n'
                          f'[[models."{MODEL}".endpoints]]\nurl = "{fake.url}"\nslots = 8\n')
        env = {"MODELS_FILE": str(models), "PUBLIC_BASE_URL": "http://127.0.0.1:9",
               "COG_UPLOAD_TOKEN": SHARED, "COG_WEBHOOK_SECRET": SECRET,
               "LOCAL_STORAGE_PATH": str(tmp / "media"), "DOWNLOAD_MAX_BYTES": "65536"}
        async with in_process(env, worker=True) as stack:
            yield Cog(stack, stack.client(), fake, tmp / "media")


async def _running(cogs: Cog) -> tuple[str, str]:
    """A Cog job whose prediction runs on the (fake) server: (job id, its Cog id)."""
    created = await cogs.client.post("/api/v1/generate", json={
        "prompt": "a fox", "model": MODEL, "parameters": {"width": 64, "height": 64}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    for _ in range(400):
        job = (await cogs.client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] == "processing" and job["prediction_id"]:
            return job_id, ids.cog_id(job_id, job["attempts"])
        await asyncio.sleep(0.025)
    raise AssertionError(f"the prediction never started: {job}")


def _upload(cogs: Cog, prediction: str, body: bytes, content_type: str = "image/png",
            token: str = SHARED, name: str = "out-0.png") -> Any:
    return cogs.client.put(f"/api/v1/uploads/cog/{token}/{name}", content=body,
                           headers={"content-type": content_type, "x-prediction-id": prediction})


def _staged(cogs: Cog, prediction: str) -> list[Path]:
    return [p for p in (cogs.media / "cog-staging" / prediction).glob("*") if p.is_file()]


async def test_the_shared_upload_token_alone_stores_nothing(cogs: Cog) -> None:
    """A PUT that knows the upload URL's token and a running prediction's id is refused: only
    the id the prediction's own server was given (it carries that prediction's token) works."""
    job_id, prediction = await _running(cogs)
    given = cogs.fake.given(prediction)
    forged = given[:-4] + ("AAAA" if not given.endswith("AAAA") else "BBBB")
    answers = [
        await _upload(cogs, prediction, PNG),  # the shared token and the bare id
        await _upload(cogs, forged, PNG),  # another token
        await _upload(cogs, ids.cog_id(uuid.uuid4(), 1) + given[len(prediction):], PNG),
    ]
    assert [a.status_code for a in answers] == [401, 401, 401], [a.text for a in answers]
    assert _staged(cogs, prediction) == []
    wrong_url = await _upload(cogs, given, PNG, token="not-the-token")
    assert wrong_url.status_code == 401  # and the shared token is still needed
    ok = await _upload(cogs, given, PNG)
    assert ok.status_code == 201, ok.text
    assert ok.headers["location"].startswith(cog_outputs.UPLOADED)
    assert len(_staged(cogs, prediction)) == 1
    await cogs.client.post(f"/api/v1/jobs/{job_id}/cancel")


async def test_an_upload_must_be_what_it_says_it_is(cogs: Cog) -> None:
    job_id, prediction = await _running(cogs)
    given = cogs.fake.given(prediction)
    html = await _upload(cogs, given, HTML)  # HTML sent as image/png
    jpeg = await _upload(cogs, given, PNG, content_type="image/jpeg")  # a PNG called a JPEG
    unknown = await _upload(cogs, given, b"\0" * 128, content_type="application/octet-stream")
    assert [r.status_code for r in (html, jpeg, unknown)] == [415, 415, 415], html.text
    assert all(r.json()["code"] == "unsupported_media_type" for r in (html, jpeg, unknown))
    assert _staged(cogs, prediction) == []
    named = await _upload(cogs, given, PNG, content_type="application/octet-stream")
    assert named.status_code == 201  # octet-stream: the file name's type, the bytes agree
    await cogs.client.post(f"/api/v1/jobs/{job_id}/cancel")


async def test_inline_outputs_must_be_what_they_say_they_are(cogs: Cog) -> None:
    """The completion webhook's data: URIs are checked the same way: the job fails, saying
    why, and keeps nothing."""
    job_id, prediction = await _running(cogs)
    token = ids.webhook_token(SECRET.encode(), prediction)
    lie = "data:image/png;base64," + base64.b64encode(HTML).decode()
    hook = await cogs.client.post(f"/api/v1/webhooks/cog/{prediction}/{token}", json={
        "id": cogs.fake.given(prediction), "status": "succeeded", "output": [lie]})
    assert hook.status_code == 200, hook.text
    job = await wait_terminal(cogs.client, job_id)
    assert job["status"] == "failed", job
    assert "image/png" in job["error"] and job["outputs"] == [], job["error"]
    assert _staged(cogs, prediction) == []


async def test_a_completion_with_more_outputs_than_a_job_keeps_fails_it(cogs: Cog) -> None:
    """300 inline outputs in one webhook: the job fails saying why, and none of them was
    staged (MAX_OUTPUTS_PER_JOB, 16 by default; the same rule as every provider's)."""
    job_id, prediction = await _running(cogs)
    token = ids.webhook_token(SECRET.encode(), prediction)
    one = "data:image/png;base64," + base64.b64encode(PNG).decode()
    hook = await cogs.client.post(f"/api/v1/webhooks/cog/{prediction}/{token}", json={
        "id": cogs.fake.given(prediction), "status": "succeeded", "output": [one] * 300})
    assert hook.status_code == 200, hook.text
    job = await wait_terminal(cogs.client, job_id)
    assert job["status"] == "failed" and job["outputs"] == [], job
    assert "300 outputs" in job["error"] and "MAX_OUTPUTS_PER_JOB (16)" in job["error"]
    assert _staged(cogs, prediction) == []


async def test_staged_outputs_nobody_will_use_are_swept(cogs: Cog) -> None:
    """Staged for a prediction whose job ended (or no job at all), or older than any job may
    run: gone after a sweep. Staged for a prediction that runs now: kept."""
    ended, ended_prediction = await _running(cogs)
    running, running_prediction = await _running(cogs)
    for prediction in (ended_prediction, running_prediction):
        answer = await _upload(cogs, cogs.fake.given(prediction), PNG)
        assert answer.status_code == 201, answer.text
    canceled = await cogs.client.post(f"/api/v1/jobs/{ended}/cancel")
    assert canceled.status_code == 200, canceled.text
    # Left by a job long gone, and by something that is no prediction of ours, a day ago.
    orphan = cogs.media / "cog-staging" / ids.cog_id(uuid.uuid4(), 2) / f"{uuid.uuid4().hex}.png"
    stray = cogs.media / "cog-staging" / "not-a-prediction" / f"{uuid.uuid4().hex}.png"
    day_ago = time.time() - 86_400
    for path in (orphan, stray):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG)
        os.utime(path, (day_ago, day_ago))
    assert cogs.stack.worker is not None
    await sweep(cogs.stack.worker.pipeline)
    assert _staged(cogs, ended_prediction) == []
    assert not orphan.exists() and not stray.exists()
    assert len(_staged(cogs, running_prediction)) == 1  # its job may still use it
    await cogs.client.post(f"/api/v1/jobs/{running}/cancel")
    await sweep(cogs.stack.worker.pipeline)
    assert _staged(cogs, running_prediction) == []
