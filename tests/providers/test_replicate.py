"""ReplicateProvider against the fake Replicate over real HTTP (faults chosen per prompt)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mediagen.config import Settings
from mediagen.errors import PermanentProviderError, RetryableProviderError
from mediagen.providers.base import GenerationRequest, Output, Prediction, PredictionStatus
from mediagen.providers.replicate import ReplicateProvider, parse_progress, parse_retry_after
from tests.fakes.replicate_server import FakeReplicate

VERSION = "a" * 64


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(latency=0.2) as server:
        yield server


def settings_for(fake: FakeReplicate, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "replicate_api_token": fake.config.token,
        "replicate_base_url": fake.url,
        "download_allow_private": True,
        "replicate_timeout": 5.0,
        "download_timeout": 5.0,
    }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
async def provider(fake: FakeReplicate) -> AsyncIterator[ReplicateProvider]:
    provider = ReplicateProvider(settings_for(fake))
    yield provider
    await provider.close()


def request(prompt: str = "a lighthouse", **kwargs: Any) -> GenerationRequest:
    """A request whose prompt is unique, so `times=` fault counters never cross tests."""
    return GenerationRequest(
        job_id=uuid.uuid4().hex,
        prompt=f"{prompt} #{uuid.uuid4().hex[:8]}",
        parameters=kwargs.pop("parameters", {}),
        **kwargs,
    )


async def finish(
    provider: ReplicateProvider, req: GenerationRequest, prediction: Prediction | None = None
) -> Prediction:
    prediction = prediction or await provider.create(req)
    deadline = time.monotonic() + 5
    while not prediction.status.is_terminal:
        assert time.monotonic() < deadline, "prediction never finished"
        await asyncio.sleep(0.05)
        prediction = await provider.get(prediction.id, req)
    return prediction


async def test_create_get_fetch_png(provider: ReplicateProvider, fake: FakeReplicate) -> None:
    req = request(parameters={"width": 512})
    created = await provider.create(req)
    assert created.status is PredictionStatus.STARTING and created.poll_after is None
    await asyncio.sleep(0.1)
    midway = await provider.get(created.id, req)
    assert midway.status is PredictionStatus.PROCESSING and not midway.outputs
    assert (progress := parse_progress(midway.logs)) and progress["percent"] < 100
    done = await finish(provider, req, midway)
    assert done.status is PredictionStatus.SUCCEEDED and len(done.outputs) == 1
    assert parse_progress(done.logs) == {"current": 20, "total": 20, "percent": 100}
    fetched = await provider.fetch(done.outputs[0])
    assert (fetched.content_type, fetched.ext) == ("image/png", "png")
    assert isinstance(fetched.body, bytes)
    with Image.open(io.BytesIO(fetched.body)) as image:
        assert image.format == "PNG" and image.size == (64, 64)
    assert fake.stats.downloads_with_token == 0  # the API token never goes to output hosts


@pytest.mark.parametrize(
    ("model", "route"),
    [
        ("acme/painter", "POST /v1/models/{owner}/{name}/predictions"),
        (None, "POST /v1/models/{owner}/{name}/predictions"),  # the settings' default model
        (f"acme/painter:{VERSION}", "POST /v1/predictions"),
        (VERSION, "POST /v1/predictions"),
    ],
)
async def test_model_and_version_forms(
    provider: ReplicateProvider, fake: FakeReplicate, model: str | None, route: str
) -> None:
    before = fake.stats.requests[route]
    prediction = await provider.create(request(model=model))
    assert prediction.id and fake.stats.requests[route] == before + 1


async def test_invalid_model_is_permanent_without_a_request(provider: ReplicateProvider) -> None:
    with pytest.raises(PermanentProviderError, match="invalid model"):
        await provider.create(request(model="not a model"))


async def test_429_carries_retry_after_then_succeeds(provider: ReplicateProvider) -> None:
    req = request("[fake:429 times=1 retry_after=7]")
    with pytest.raises(RetryableProviderError) as caught:
        await provider.create(req)
    assert caught.value.retry_after == 7
    assert (await provider.create(req)).status is PredictionStatus.STARTING


def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (parse_retry_after(when) or 0) <= 30
    assert parse_retry_after("nonsense") is None and parse_retry_after("-3") == 0


@pytest.mark.parametrize("fault", ["500", "garbage"])
async def test_server_errors_and_garbage_are_retryable(
    provider: ReplicateProvider, fault: str
) -> None:
    with pytest.raises(RetryableProviderError):
        await provider.create(request(f"[fake:{fault}]"))


async def test_get_fault_is_retryable_then_recovers(provider: ReplicateProvider) -> None:
    req = request("[fake:500 on=get times=1]")
    prediction = await provider.create(req)
    with pytest.raises(RetryableProviderError):
        await provider.get(prediction.id, req)
    assert (await finish(provider, req, prediction)).status is PredictionStatus.SUCCEEDED


async def test_422_is_permanent_with_detail(provider: ReplicateProvider) -> None:
    with pytest.raises(PermanentProviderError, match="fake validation error: prompt rejected"):
        await provider.create(request("[fake:422]"))


async def test_bad_token_is_permanent(fake: FakeReplicate) -> None:
    provider = ReplicateProvider(settings_for(fake, replicate_api_token="wrong"))
    try:
        with pytest.raises(PermanentProviderError, match="401"):
            await provider.create(request())
    finally:
        await provider.close()


async def test_failed_prediction_surfaces_error(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:failed error=NSFW_content_detected]"))
    assert done.status is PredictionStatus.FAILED
    assert done.error == "NSFW content detected" and not done.outputs


async def test_several_outputs_of_several_media_types(provider: ReplicateProvider) -> None:
    kinds = "image/png,image/jpeg,image/webp,video/mp4,audio/wav"
    done = await finish(provider, request(f"[fake:outputs={kinds}]"))
    fetched = [await provider.fetch(output) for output in done.outputs]
    assert [(f.content_type, f.ext) for f in fetched] == [
        ("image/png", "png"),
        ("image/jpeg", "jpg"),
        ("image/webp", "webp"),
        ("video/mp4", "mp4"),
        ("audio/wav", "wav"),
    ]
    bodies = [f.body for f in fetched]
    assert all(isinstance(body, bytes) for body in bodies)
    assert bodies[3][4:8] == b"ftyp"  # type: ignore[index]
    with wave.open(io.BytesIO(bodies[4]), "rb") as audio:  # type: ignore[arg-type]
        assert audio.getnframes() == 800


async def test_single_string_output(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:single]"))
    assert len(done.outputs) == 1 and (done.outputs[0].url or "").endswith(".png")


@pytest.mark.parametrize("prompt", ["[fake:oversized]", "[fake:oversized nolength]"])
async def test_oversized_output_refused(fake: FakeReplicate, prompt: str) -> None:
    provider = ReplicateProvider(settings_for(fake, download_max_bytes=64 * 1024))
    try:
        done = await finish(provider, request(prompt))
        with pytest.raises(PermanentProviderError, match="output exceeds 65536 bytes"):
            await provider.fetch(done.outputs[0])
    finally:
        await provider.close()


async def test_truncated_download_is_retryable(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:truncated]"))
    with pytest.raises(RetryableProviderError, match=r"interrupted|truncated"):
        await provider.fetch(done.outputs[0])


async def test_missing_output_is_permanent(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:file404]"))
    with pytest.raises(PermanentProviderError, match="not found"):
        await provider.fetch(done.outputs[0])


async def test_redirects_followed_up_to_five(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:redirect=3]"))
    assert (await provider.fetch(done.outputs[0])).ext == "png"
    done = await finish(provider, request("[fake:redirect=6]"))
    with pytest.raises(PermanentProviderError, match="redirects"):
        await provider.fetch(done.outputs[0])


async def test_private_address_refused(fake: FakeReplicate, provider: ReplicateProvider) -> None:
    done = await finish(provider, request())
    strict = ReplicateProvider(settings_for(fake, download_allow_private=False))
    try:
        for url in [done.outputs[0].url, "http://localhost:9/x.png", "http://169.254.169.254/"]:
            with pytest.raises(PermanentProviderError, match="non-public"):
                await strict.fetch(Output(url=url))
        with pytest.raises(PermanentProviderError, match="not an http"):
            await strict.fetch(Output(url="file:///etc/passwd"))
    finally:
        await strict.close()


async def test_cancel(provider: ReplicateProvider, fake: FakeReplicate) -> None:
    req = request("[fake:stuck]")
    prediction = await provider.create(req)
    await asyncio.sleep(0.1)
    assert (await provider.get(prediction.id, req)).status is PredictionStatus.PROCESSING
    before = fake.stats.cancels
    await provider.cancel(prediction.id)
    assert (await provider.get(prediction.id, req)).status is PredictionStatus.CANCELED
    await provider.cancel(prediction.id)  # already terminal
    await provider.cancel("no-such-prediction")  # 404
    assert fake.stats.cancels == before + 3


async def test_hung_response_is_retryable_within_timeout(fake: FakeReplicate) -> None:
    provider = ReplicateProvider(settings_for(fake, replicate_timeout=0.5))
    started = time.monotonic()
    try:
        with pytest.raises(RetryableProviderError, match="Timeout"):
            await provider.create(request("[fake:hang]"))
    finally:
        await provider.close()
    assert time.monotonic() - started < 2


async def test_many_predictions_in_flight(provider: ReplicateProvider) -> None:
    requests = [request(f"job {n}") for n in range(200)]
    created = await asyncio.gather(*(provider.create(req) for req in requests))
    await asyncio.sleep(0.3)
    done = await asyncio.gather(
        *(provider.get(p.id, r) for p, r in zip(created, requests, strict=True))
    )
    assert {p.status for p in done} == {PredictionStatus.SUCCEEDED}


@pytest.mark.parametrize(
    ("logs", "expected"),
    [
        (None, None),
        ("Using seed 1\nloading weights", None),
        (
            "  0%|          | 0/50 [00:00<?, ?it/s]\n 40%|####      | 20/50 [00:02<00:03, 9.9it/s]",
            {"current": 20, "total": 50, "percent": 40},
        ),
        (
            "Sampling: 100%|██████████| 28/28 [00:04<00:00,  6.2it/s]\rdone",
            {"current": 28, "total": 28, "percent": 100},
        ),
    ],
)
def test_parse_progress(logs: str | None, expected: dict[str, int] | None) -> None:
    assert parse_progress(logs) == expected


async def test_global_faults_and_reset() -> None:
    with FakeReplicate(latency=0.1, faults="500 times=2") as fake:
        provider = ReplicateProvider(settings_for(fake))
        try:
            for _ in range(2):
                with pytest.raises(RetryableProviderError, match="HTTP 500"):
                    await provider.create(request())
            await provider.create(request())
            assert (fake.stats.create_attempts, fake.stats.created) == (3, 1)
            fake.reset()
            fake.configure(faults="failed error=boom")
            assert (await finish(provider, request())).error == "boom"
            assert fake.stats.requests["POST /v1/predictions/{id}/cancel"] == 0
        finally:
            await provider.close()


def test_fake_runs_as_a_subprocess() -> None:
    """The benchmark's mode: configured over the admin API, counters read back the same way."""
    command = [sys.executable, "-m", "tests.fakes.replicate_server", "--port", "0"]
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[3]  # "fake replicate on URL secret=..."
            admin = url.removesuffix("/v1") + "/_admin"
            config = {"latency": 0.1, "outputs": ["audio/wav"]}
            httpx.post(f"{admin}/config", json=config).raise_for_status()
            api = httpx.Client(base_url=url, headers={"Authorization": "Bearer test-token"})
            created = api.post("/predictions", json={"version": VERSION, "input": {}}).json()
            time.sleep(0.2)
            done = api.get(f"/predictions/{created['id']}").json()
            assert done["status"] == "succeeded" and done["output"][0].endswith(".wav")
            assert httpx.get(f"{admin}/stats").json()["created"] == 1
        finally:
            process.terminate()
