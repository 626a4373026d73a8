"""Jobs on the Replicate provider, end to end: API + worker processes against the fake
Replicate server over HTTP. Two stacks: one polling only, one with webhooks (and polling slowed
to 60 s, so a job that finishes quickly can only have been finished by its webhook)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from mediagen.jobs.models import Job
from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.replicate import FakeReplicate
from tests.support import free_port, unsigned, wait_terminal


@dataclass
class Stack:
    url: str
    fake: FakeReplicate
    redis_url: str


def _stack(name: str, fake: FakeReplicate, webhooks: bool = False,
           **env: str) -> Iterator[Stack]:
    """API + worker on a Redis database of their own; with `webhooks`, Replicate is told to
    call back."""
    broker_url = REDIS.fresh()
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    port = free_port()
    settings = {"REPLICATE_API_TOKEN": fake.config.token, "REPLICATE_BASE_URL": fake.url,
                "DOWNLOAD_ALLOW_PRIVATE": "true", "REDIS_URL": broker_url,
                "DOWNLOAD_MAX_BYTES": str(1024 * 1024), "REPLICATE_TIMEOUT": "3", **env}
    if webhooks:
        settings |= {"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                     "REPLICATE_WEBHOOK_SECRET": fake.config.webhook_secret}
    worker = start_worker(f"worker-{name}", broker, settings)
    api, url = start_api(f"api-{name}", settings, port)
    try:
        yield Stack(url, fake, broker_url)
    finally:
        api.stop()
        worker.stop()
        broker.flushdb()
        broker.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(latency=0.4) as server:
        yield server


@pytest.fixture(scope="module")
def polling(database: str, fake: FakeReplicate) -> Iterator[Stack]:
    yield from _stack("poll", fake, POLL_INTERVAL="0.3", JOB_TIMEOUT="6")


@pytest.fixture(scope="module")
def hooked(database: str, fake: FakeReplicate) -> Iterator[Stack]:
    # Polling slowed to 60 s: a job that finishes quickly was finished by its webhook.
    yield from _stack("hook", fake, webhooks=True, POLL_INTERVAL="60")


async def _run(stack: Stack, prompt: str, timeout: float = 20, **params: object) -> dict:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        created = await client.post("/api/v1/generate",
                                    json={"prompt": prompt, "parameters": params})
        assert created.status_code == 201, created.text
        return await wait_terminal(client, created.json()["job_id"], timeout)


def _sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _headers(secret: str, body: bytes, message_id: str | None = None,
             timestamp: int | None = None) -> dict[str, str]:
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": _sign(secret, message_id, timestamp, body),
            "content-type": "application/json"}


# --- polling ------------------------------------------------------------------------------

async def test_success_by_polling(polling: Stack) -> None:
    job = await _run(polling, "a polled lighthouse")
    assert job["status"] == "completed", job
    assert job["provider"] == "replicate" and job["prediction_id"]
    assert job["outputs"][0]["content_type"] == "image/png"
    async with httpx.AsyncClient(base_url=polling.url) as client:
        image = await client.get(job["result_url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


async def test_429_then_success(polling: Stack) -> None:
    job = await _run(polling, f"[fake:429 times=1 retry_after=1] {uuid.uuid4()}")
    assert job["status"] == "completed", job
    assert job["retry_count"] == 1 and job["attempts"] == 2


async def test_500_until_retries_exhausted(polling: Stack) -> None:
    job = await _run(polling, f"[fake:500 times=9] {uuid.uuid4()}")
    assert job["status"] == "failed", job
    assert job["retry_count"] == 2  # MAX_RETRIES in the test settings
    assert job["error"].startswith("gave up after 2 retries:")
    assert "500" in job["error"]


async def test_model_failure_text_is_surfaced(polling: Stack) -> None:
    job = await _run(polling, "[fake:failed error=NSFW_content_detected] a cat")
    assert job["status"] == "failed"
    assert job["retry_count"] == 0
    assert "NSFW content detected" in job["error"].replace("_", " ")


async def test_deadline_cancels_the_prediction(polling: Stack) -> None:
    cancels = polling.fake.stats.cancels
    job = await _run(polling, f"[fake:stuck] {uuid.uuid4()}", timeout=20)
    assert job["status"] == "failed"
    assert job["error"].startswith("deadline exceeded")
    for _ in range(100):  # the cancel follows the failure (a task of its own)
        if polling.fake.stats.cancels > cancels:
            break
        time.sleep(0.05)
    assert polling.fake.stats.cancels == cancels + 1


async def test_several_outputs_of_several_media_types(polling: Stack) -> None:
    job = await _run(polling, "[fake:outputs=image/png,video/mp4,audio/wav] a music video")
    assert job["status"] == "completed", job
    types = [o["content_type"] for o in job["outputs"]]
    assert types == ["image/png", "video/mp4", "audio/wav"]
    assert unsigned(job["result_url"]) == unsigned(job["outputs"][0]["url"])
    job_id = job["job_id"]
    assert [unsigned(o["url"]) for o in job["outputs"]] == [
        f"/media/{job_id}.png", f"/media/{job_id}-1.mp4", f"/media/{job_id}-2.wav"]
    async with httpx.AsyncClient(base_url=polling.url) as client:
        for output in job["outputs"]:
            response = await client.get(output["url"])
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(output["content_type"])
            assert len(response.content) == output["size"]


async def test_a_text_model_streams_into_the_jobs_output(polling: Stack) -> None:
    """A Replicate model that returns text (a stream of chunks) has no file: the job's output
    is the chunks, the ones so far while it runs."""
    words = "the quick brown fox jumps over the lazy dog"
    chunks = ["the", *(f" {word}" for word in words.split()[1:])]
    async with httpx.AsyncClient(base_url=polling.url, timeout=30) as client:
        created = await client.post("/api/v1/generate", json={
            "prompt": f"[fake:text latency=3] {words}"})
        job_id = created.json()["job_id"]
        seen = []
        while (job := (await client.get(f"/api/v1/jobs/{job_id}")).json())["status"] in (
                "pending", "processing"):
            seen.append(job["output"])
            await asyncio.sleep(0.1)
    assert job["status"] == "completed", job
    assert job["output"] == chunks and job["outputs"] == [] and job["result_url"] is None
    partial = [output for output in seen if output and len(output) < len(chunks)]
    assert partial and all(output == chunks[: len(output)] for output in partial), seen


async def test_oversized_output_is_refused(polling: Stack) -> None:
    job = await _run(polling, "[fake:oversized] a huge panorama")
    assert job["status"] == "failed"
    assert "exceeds" in job["error"]
    assert job["outputs"] == [] and job["result_url"] is None


# --- a concurrency limit ------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(database: str, fake: FakeReplicate) -> Iterator[Stack]:
    yield from _stack("limited", fake, MODEL_CONCURRENCY="2", POLL_INTERVAL="0.2")


async def test_a_model_with_a_limit_runs_that_many_predictions_at_once(limited: Stack) -> None:
    """MODEL_CONCURRENCY=2 (an account's limit, say): never more than two of the model's jobs
    run; the rest wait pending (holding no worker) and start as slots free; all complete in
    one attempt, none spent on a refusal."""
    created_before = limited.fake.stats.created
    async with httpx.AsyncClient(base_url=limited.url, timeout=30) as client:
        ids = []
        for n in range(8):
            response = await client.post("/api/v1/generate", json={"prompt": f"limited {n}"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["job_id"])
        most, waited = 0, False
        deadline = time.monotonic() + 60
        while await Job.filter(id__in=ids, status__in=("pending", "processing")).count():
            assert time.monotonic() < deadline
            running = await Job.filter(id__in=ids, status="processing").count()
            pending = await Job.filter(id__in=ids, status="pending").count()
            most = max(most, running)
            waited = waited or (running == 2 and pending > 0)
            await asyncio.sleep(0.02)
        done = [await wait_terminal(client, job_id) for job_id in ids]
    assert most == 2 and waited, (most, waited)
    assert [d["status"] for d in done] == ["completed"] * 8, done
    assert all(d["attempts"] == 1 for d in done)
    assert limited.fake.stats.created - created_before == 8


# --- webhooks -----------------------------------------------------------------------------

async def test_success_by_webhook(hooked: Stack) -> None:
    delivered = hooked.fake.stats.webhooks_delivered
    started = time.monotonic()
    job = await _run(hooked, "a lighthouse told by webhook", timeout=15)
    assert job["status"] == "completed", job
    assert time.monotonic() - started < 15  # polling is set to 60 s: this was the webhook
    assert hooked.fake.stats.webhooks_delivered > delivered


async def test_forged_and_replayed_webhooks_are_rejected(hooked: Stack) -> None:
    async with httpx.AsyncClient(base_url=hooked.url, timeout=30) as client:
        created = await client.post("/api/v1/generate",
                                    json={"prompt": f"[fake:stuck] {uuid.uuid4()}"})
        job_id = created.json()["job_id"]
        for _ in range(100):
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["prediction_id"]:
                break
            time.sleep(0.05)
        body = json.dumps({"id": job["prediction_id"], "status": "succeeded",
                           "output": ["http://127.0.0.1:1/x.png"]}).encode()
        secret = hooked.fake.config.webhook_secret
        forged = _headers("whsec_" + base64.b64encode(b"not-the-secret").decode(), body)
        replayed = _headers(secret, body, timestamp=int(time.time()) - 600)
        unsigned = {"content-type": "application/json"}
        for headers in (forged, replayed, unsigned):
            response = await client.post("/api/v1/webhooks/replicate", content=body,
                                         headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthorized"
        after = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert after["status"] == "processing"
    assert after["updated_at"] >= job["updated_at"]


async def test_duplicate_webhook_completes_once(hooked: Stack) -> None:
    job = await _run(hooked, "a twice-delivered sunrise", timeout=15)
    assert job["status"] == "completed"
    body = json.dumps({"id": job["prediction_id"], "status": "succeeded"}).encode()
    headers = _headers(hooked.fake.config.webhook_secret, body, message_id="msg_dup_1")
    async with httpx.AsyncClient(base_url=hooked.url, timeout=30) as client:
        first = await client.post("/api/v1/webhooks/replicate", content=body, headers=headers)
        second = await client.post("/api/v1/webhooks/replicate", content=body, headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.json()["status"] == "ignored"  # the job is already completed
        assert second.json()["status"] == "duplicate"
        again = (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    assert again["completed_at"] == job["completed_at"] and again["attempts"] == 1


async def test_webhooks_off_without_a_secret(polling: Stack) -> None:
    async with httpx.AsyncClient(base_url=polling.url) as client:
        response = await client.post("/api/v1/webhooks/replicate", json={})
    assert response.status_code == 404


async def test_cancel_a_processing_job_cancels_its_prediction(polling: Stack) -> None:
    cancels = polling.fake.stats.cancels
    async with httpx.AsyncClient(base_url=polling.url, timeout=30) as client:
        created = await client.post("/api/v1/generate",
                                    json={"prompt": f"[fake:stuck] {uuid.uuid4()}"})
        job_id = created.json()["job_id"]
        for _ in range(200):  # until the prediction is recorded
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["prediction_id"]:
                break
            time.sleep(0.05)
        assert job["status"] == "processing" and job["prediction_id"]
        canceled = await client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        for _ in range(100):  # the worker cancels upstream right after
            if polling.fake.stats.cancels > cancels:
                break
            time.sleep(0.05)
        final = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert polling.fake.stats.cancels == cancels + 1
    assert final["status"] == "canceled"


async def test_a_job_canceled_while_its_output_downloads_keeps_no_output(polling: Stack) -> None:
    """The download finishes after the cancel: the completion is refused and the stored file
    is deleted, so nothing of a canceled job stays in storage."""
    from tests.conftest import TEST_ENV

    media = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
    async with httpx.AsyncClient(base_url=polling.url, timeout=30) as client:
        created = await client.post("/api/v1/generate", json={
            "prompt": f"[fake:bytes={512 * 1024} drip=0.02 nolength] {uuid.uuid4()}"})
        job_id = created.json()["job_id"]
        for _ in range(400):  # until the download is under way (a .part file appears)
            if list(media.glob(f".{job_id}*.part")):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the download never started")
        assert (await client.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
        for _ in range(300):  # the download ends, the completion is refused, the file goes
            if not list(media.glob(f"*{job_id}*")):
                break
            time.sleep(0.05)
        final = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert final["status"] == "canceled" and final["outputs"] == []
    assert list(media.glob(f"*{job_id}*")) == []


async def test_a_webhook_with_two_ids_is_refused(hooked: Stack) -> None:
    """Signature check and dedupe must judge the same webhook-id: two of them are refused, even
    when one of them is correctly signed."""
    body = json.dumps({"id": "p-two-ids", "status": "succeeded"}).encode()
    signed = _headers(hooked.fake.config.webhook_secret, body, message_id="msg_signed")
    headers = [*signed.items(), ("webhook-id", "msg_other")]
    async with httpx.AsyncClient(base_url=hooked.url, timeout=30) as client:
        response = await client.post("/api/v1/webhooks/replicate", content=body, headers=headers)
        alone = await client.post("/api/v1/webhooks/replicate", content=body, headers=signed)
    assert response.status_code == 401
    assert "more than one webhook-id" in response.json()["detail"]
    assert alone.status_code == 200  # the same webhook with one id is fine


async def _processing(client: httpx.AsyncClient, prompt: str) -> dict:
    created = await client.post("/api/v1/generate", json={"prompt": prompt})
    job_id = created.json()["job_id"]
    for _ in range(200):  # until the prediction is recorded
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["prediction_id"]:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"no prediction recorded: {job}")


async def test_a_failed_upstream_cancel_is_tried_again(polling: Stack) -> None:
    """Cancel answers 500 twice upstream: the worker tries again until it is confirmed (the
    prediction would otherwise keep running, and billing)."""
    from mediagen.jobs.models import UpstreamCancel

    cancels = polling.fake.stats.cancels
    async with httpx.AsyncClient(base_url=polling.url, timeout=30) as client:
        job = await _processing(client, f"[fake:stuck 500 on=cancel times=2] {uuid.uuid4()}")
        assert (await client.post(f"/api/v1/jobs/{job['job_id']}/cancel")).status_code == 200
    for _ in range(200):
        if not await UpstreamCancel.filter(prediction_id=job["prediction_id"]).exists():
            break
        time.sleep(0.05)
    assert polling.fake.stats.cancels == cancels + 3  # 500, 500, confirmed
    assert not await UpstreamCancel.filter(prediction_id=job["prediction_id"]).exists()


async def test_a_lost_upstream_cancel_is_sent_by_the_sweeper(polling: Stack) -> None:
    """The cancel's message was lost (the record is there, nothing in the queue): the sweeper
    sends it again."""
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox
    from mediagen.config import Settings
    from mediagen.jobs import upstream_cancels
    from mediagen.jobs.models import UpstreamCancel
    from mediagen.jobs.pipeline import Pipeline
    from mediagen.jobs.sweeper import sweep
    from mediagen.providers.builtin.provider import BuiltinProvider
    from mediagen.storage.local import LocalStorage

    async with httpx.AsyncClient(base_url=polling.url, timeout=30) as client:
        job = await _processing(client, f"[fake:stuck] {uuid.uuid4()}")
    await upstream_cancels.record(job["prediction_id"], job["job_id"])
    await UpstreamCancel.filter(prediction_id=job["prediction_id"]).update(
        next_attempt_at=datetime.now(UTC) - timedelta(minutes=5))
    cancels = polling.fake.stats.cancels
    outbox = Outbox(aioredis.from_url(polling.redis_url))  # the stack's
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    pipeline = Pipeline(settings, BuiltinProvider(), LocalStorage(Path("/nonexistent")), outbox)
    try:
        await sweep(pipeline)
    finally:
        await outbox.close()
        await outbox.client.aclose()
    for _ in range(100):
        if polling.fake.stats.cancels > cancels:
            break
        time.sleep(0.05)
    assert polling.fake.stats.cancels == cancels + 1


async def test_a_download_longer_than_the_lease_is_not_finished_twice(
    database: str, fake: FakeReplicate
) -> None:
    """A 2 s lease, a 6 s download and the sweeper every second: the lease is renewed while the
    download runs, so the sweeper never hands the job to a second finish."""
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox
    from mediagen.config import Settings
    from mediagen.jobs.pipeline import Pipeline
    from mediagen.jobs.sweeper import sweep
    from mediagen.providers.builtin.provider import BuiltinProvider
    from mediagen.storage.local import LocalStorage

    for stack in _stack("lease", fake, LEASE_SECONDS="2", POLL_INTERVAL="0.3"):
        outbox = Outbox(aioredis.from_url(stack.redis_url))
        sweeper = Pipeline(Settings(_env_file=None, lease_seconds=2, sweep_interval=1,  # type: ignore[call-arg]
                                    dispatch_grace=0),
                           BuiltinProvider(), LocalStorage(Path("/nonexistent")), outbox)
        try:
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                created = await client.post("/api/v1/generate", json={
                    "prompt": f"[fake:bytes={256 * 1024} drip=1.5 nolength] {uuid.uuid4()}"})
                job_id = created.json()["job_id"]
                for _ in range(20):
                    await sweep(sweeper)
                    job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                    if job["status"] in ("completed", "failed"):
                        break
                    await asyncio.sleep(1)
        finally:
            await outbox.close()
            await outbox.client.aclose()
        assert job["status"] == "completed", job
        assert job["attempts"] == 1
        assert fake.stats.downloads_of[job["prediction_id"]] == 1  # one finish only
