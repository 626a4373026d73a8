"""ReplicateProvider against the fake Replicate over real HTTP (faults chosen per prompt), its
downloads streamed into real storage (a local directory, S3 on moto)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import subprocess
import sys
import time
import tracemalloc
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mediagen.config import Settings
from mediagen.errors import PermanentProviderError, ProviderError, RetryableProviderError
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)
from mediagen.providers.replicate.provider import ReplicateProvider, parse_progress
from mediagen.retry import parse_retry_after
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import PART_SIZE, S3Storage
from tests.fakes.replicate.state import stream_bytes
from tests.fakes.replicate_server import FakeReplicate
from tests.s3_fixtures import BUCKET

VERSION = "a" * 64
MiB = 1024 * 1024
LARGE = 20 * MiB  # a video-sized output: several S3 parts


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


async def read_all(fetched: Fetched) -> bytes:
    if isinstance(fetched.body, bytes):
        return fetched.body
    return b"".join([chunk async for chunk in fetched.body])


async def fetch_all(provider: ReplicateProvider, output: Output) -> Fetched:
    """The output read whole (small outputs only: what storage does, minus the storage)."""
    async with provider.fetch(output) as fetched:
        return Fetched(await read_all(fetched), fetched.content_type, fetched.ext)


def count_parts(storage: S3Storage) -> list[int]:
    """Record the part numbers `storage` uploads (to tell a streamed multipart from one put)."""
    parts: list[int] = []
    upload_part = storage._part

    async def counted(*args: Any) -> Any:
        parts.append(args[3])
        return await upload_part(*args)

    storage._part = counted  # type: ignore[method-assign]
    return parts


async def fetch_into(
    provider: ReplicateProvider, output: Output, storage: Storage, key: str
) -> tuple[int, bool]:
    """What the job pipeline does: (bytes saved, whether the body was handed out at all)."""
    opened = False
    async with provider.fetch(output) as fetched:
        opened = True
        assert not isinstance(fetched.body, bytes)  # a stream, not a buffer
        return await storage.save(key, fetched.body, fetched.content_type), opened


def generated_digest(prediction: Prediction, size: int, index: int = 0) -> str:
    """sha256 of what the fake serves for `[fake:bytes=size]`, made chunk by chunk."""
    digest = hashlib.sha256()
    for chunk in stream_bytes(f"{prediction.id}/{index}", size):
        digest.update(chunk)
    return digest.hexdigest()


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


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
    async with provider.fetch(done.outputs[0]) as fetched:
        assert (fetched.content_type, fetched.ext) == ("image/png", "png")
        assert not isinstance(fetched.body, bytes)  # streamed from the response as it arrives
        body = await read_all(fetched)
    with Image.open(io.BytesIO(body)) as image:
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
    fetched = [await fetch_all(provider, output) for output in done.outputs]
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


@pytest.mark.parametrize(
    ("prompt", "declared"),
    [("[fake:oversized]", True), ("[fake:oversized nolength]", False)],
)
async def test_oversized_output_refused(fake: FakeReplicate, prompt: str, declared: bool) -> None:
    """A declared size over the limit is refused before the body is handed out; an undeclared
    one while it is read."""
    provider = ReplicateProvider(settings_for(fake, download_max_bytes=64 * 1024))
    opened = False
    try:
        done = await finish(provider, request(prompt))
        with pytest.raises(PermanentProviderError, match="output exceeds 65536 bytes"):
            async with provider.fetch(done.outputs[0]) as fetched:
                opened = True
                await read_all(fetched)
    finally:
        await provider.close()
    assert opened is not declared


async def test_truncated_download_is_retryable(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:truncated]"))
    with pytest.raises(RetryableProviderError, match=r"interrupted|truncated"):
        await fetch_all(provider, done.outputs[0])


async def test_missing_output_is_permanent(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:file404]"))
    with pytest.raises(PermanentProviderError, match="not found"):
        async with provider.fetch(done.outputs[0]):
            pytest.fail("the body of a 404 was handed out")


async def test_redirects_followed_up_to_five(provider: ReplicateProvider) -> None:
    done = await finish(provider, request("[fake:redirect=3]"))
    assert (await fetch_all(provider, done.outputs[0])).ext == "png"
    done = await finish(provider, request("[fake:redirect=6]"))
    with pytest.raises(PermanentProviderError, match="redirects"):
        await fetch_all(provider, done.outputs[0])


async def test_inline_output_is_bytes(provider: ReplicateProvider) -> None:
    async with provider.fetch(Output(data=b"GIF89a", content_type="image/gif")) as fetched:
        assert (fetched.body, fetched.content_type, fetched.ext) == (b"GIF89a", "image/gif", "gif")
    with pytest.raises(PermanentProviderError, match="unsupported type"):
        await fetch_all(provider, Output(data=b"<svg/>", content_type="image/svg+xml"))


async def test_private_address_refused(fake: FakeReplicate, provider: ReplicateProvider) -> None:
    done = await finish(provider, request())
    strict = ReplicateProvider(settings_for(fake, download_allow_private=False))
    try:
        for url in [done.outputs[0].url, "http://localhost:9/x.png", "http://169.254.169.254/"]:
            with pytest.raises(PermanentProviderError, match="non-public"):
                await fetch_all(strict, Output(url=url))
        with pytest.raises(PermanentProviderError, match="not an http"):
            await fetch_all(strict, Output(url="file:///etc/passwd"))
    finally:
        await strict.close()


# --- streaming into storage ------------------------------------------------------------------


@pytest.mark.parametrize("length", ["", "nolength"])
async def test_large_output_streams_into_local_storage(
    provider: ReplicateProvider, tmp_path: Path, length: str
) -> None:
    done = await finish(provider, request(f"[fake:bytes={LARGE} outputs=video/mp4 {length}]"))
    storage = LocalStorage(tmp_path / "media")
    key = storage.key_for("large", 0, "mp4")
    tracemalloc.start()
    try:
        size, _ = await fetch_into(provider, done.outputs[0], storage, key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == LARGE
    assert peak < LARGE // 4, f"{peak} bytes held at once: the output was buffered"
    digest = hashlib.sha256()
    with storage.path_for(key).open("rb") as stored:
        while chunk := stored.read(MiB):
            digest.update(chunk)
    assert digest.hexdigest() == generated_digest(done, LARGE)
    assert files_under(storage.root) == [storage.path_for(key)]  # no temporary file left


async def test_large_output_streams_into_s3_as_multipart(
    provider: ReplicateProvider, make_s3: Callable[..., S3Storage], raw_s3: Any
) -> None:
    done = await finish(provider, request(f"[fake:bytes={LARGE} outputs=video/mp4]"))
    storage = make_s3()
    key = storage.key_for("large", 0, "mp4")
    size, _ = await fetch_into(provider, done.outputs[0], storage, key)
    assert size == LARGE
    head = await raw_s3.head_object(Bucket=BUCKET, Key=key)
    assert (head["ContentLength"], head["ContentType"]) == (LARGE, "video/mp4")
    assert head["ETag"].strip('"').endswith(f"-{math.ceil(LARGE / PART_SIZE)}")  # multipart
    assert hashlib.sha256(await storage.read(key)).hexdigest() == generated_digest(done, LARGE)


# (fault tags, provider settings, error, message, whether the body gets handed out at all)
BAD_STREAMS = [
    pytest.param(
        f"bytes={LARGE} truncated",
        {},
        RetryableProviderError,
        r"interrupted|truncated",
        True,
        id="truncated",
    ),
    pytest.param(
        f"bytes={LARGE} nolength",
        {"download_max_bytes": 12 * MiB},
        PermanentProviderError,
        f"output exceeds {12 * MiB} bytes",
        True,
        id="oversized-streamed",
    ),
    pytest.param(
        f"bytes={LARGE}",
        {"download_max_bytes": 12 * MiB},
        PermanentProviderError,
        rf"output exceeds {12 * MiB} bytes \({LARGE} declared\)",
        False,
        id="oversized-declared",
    ),
]


@pytest.mark.parametrize(("tags", "overrides", "error", "match", "opens"), BAD_STREAMS)
async def test_bad_stream_leaves_nothing_in_s3(
    fake: FakeReplicate,
    make_s3: Callable[..., S3Storage],
    raw_s3: Any,
    tags: str,
    overrides: dict[str, Any],
    error: type[ProviderError],
    match: str,
    opens: bool,
) -> None:
    provider = ReplicateProvider(settings_for(fake, **overrides))
    storage = make_s3()
    key = storage.key_for("bad", 0, "mp4")
    parts = count_parts(storage)
    try:
        done = await finish(provider, request(f"[fake:{tags} outputs=video/mp4]"))
        with pytest.raises(error, match=match) as caught:
            await fetch_into(provider, done.outputs[0], storage, key)
    finally:
        await provider.close()
    assert type(caught.value) is error  # the provider's own error, not wrapped by the storage
    assert bool(parts) is opens  # a streamed failure came after multipart had begun...
    assert not await storage.exists(key)
    uploads = await raw_s3.list_multipart_uploads(Bucket=BUCKET, Prefix=storage.prefix)
    assert not uploads.get("Uploads")  # ...and the upload was aborted, its parts dropped


@pytest.mark.parametrize(("tags", "overrides", "error", "match", "opens"), BAD_STREAMS)
async def test_bad_stream_leaves_nothing_on_disk(
    fake: FakeReplicate,
    tmp_path: Path,
    tags: str,
    overrides: dict[str, Any],
    error: type[ProviderError],
    match: str,
    opens: bool,
) -> None:
    provider = ReplicateProvider(settings_for(fake, **overrides))
    storage = LocalStorage(tmp_path / "media")
    try:
        done = await finish(provider, request(f"[fake:{tags} outputs=video/mp4]"))
        with pytest.raises(error, match=match) as caught:
            await fetch_into(provider, done.outputs[0], storage, storage.key_for("bad", 0, "mp4"))
    finally:
        await provider.close()
    assert type(caught.value) is error
    assert files_under(tmp_path) == []  # neither the output nor its `.part` temporary file


async def test_deadline_covers_the_streaming(fake: FakeReplicate, tmp_path: Path) -> None:
    """Bytes dripping in just fast enough for httpx's per-read timeout still hit the total one."""
    provider = ReplicateProvider(settings_for(fake, download_timeout=0.5))
    storage = LocalStorage(tmp_path / "media")
    try:
        done = await finish(provider, request(f"[fake:bytes={MiB} drip=0.1 nolength]"))
        started = time.monotonic()
        with pytest.raises(RetryableProviderError, match=r"timed out after 0\.5s") as caught:
            await fetch_into(provider, done.outputs[0], storage, storage.key_for("slow", 0, "png"))
    finally:
        await provider.close()
    assert time.monotonic() - started < 1.5
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert files_under(tmp_path) == []


async def test_deadline_mid_multipart_aborts_the_upload(
    fake: FakeReplicate, make_s3: Callable[..., S3Storage], raw_s3: Any
) -> None:
    """The deadline cancels the save midway: S3 aborts the upload it had begun. (The deadline
    leaves room for half of LARGE to arrive and its first part to start on a loaded machine.)"""
    provider = ReplicateProvider(settings_for(fake, download_timeout=4.0))
    storage = make_s3()
    key = storage.key_for("stalled", 0, "mp4")
    parts = count_parts(storage)
    try:
        done = await finish(provider, request(f"[fake:bytes={LARGE} stall=60 outputs=video/mp4]"))
        with pytest.raises(RetryableProviderError, match=r"timed out after 4s"):
            await fetch_into(provider, done.outputs[0], storage, key)
    finally:
        await provider.close()
    assert parts == [1]  # half of LARGE came before the stall: one part, then the deadline
    assert not await storage.exists(key)
    uploads = await raw_s3.list_multipart_uploads(Bucket=BUCKET, Prefix=storage.prefix)
    assert not uploads.get("Uploads")


async def test_consumers_own_timeout_is_not_renamed(provider: ReplicateProvider) -> None:
    done = await finish(provider, request())
    with pytest.raises(TimeoutError):
        async with provider.fetch(done.outputs[0]):
            raise TimeoutError("the consumer's, not the download's")


async def test_download_closed_when_the_context_exits(
    provider: ReplicateProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    responses: list[httpx.Response] = []
    connect = provider.outbound._connect

    async def spy(*args: Any) -> httpx.Response:
        responses.append(await connect(*args))
        return responses[-1]

    monkeypatch.setattr(provider.outbound, "_connect", spy)
    done = await finish(provider, request(f"[fake:bytes={MiB}]"))
    # Left without reading: closed, and the body can't be read afterwards (it'd look empty).
    async with provider.fetch(done.outputs[0]) as fetched:
        body = fetched.body
    assert isinstance(body, AsyncIterator)
    assert responses[-1].is_closed
    with pytest.raises(RuntimeError, match="after its context was left"):
        await anext(body)
    # The consumer fails midway: its error goes through unchanged, the response is closed.
    with pytest.raises(ValueError, match="consumer failed"):
        async with provider.fetch(done.outputs[0]) as fetched:
            assert not isinstance(fetched.body, bytes)
            async for _ in fetched.body:
                raise ValueError("consumer failed")
    assert responses[-1].is_closed
    # Redirect hops are closed as they are followed.
    done = await finish(provider, request("[fake:redirect=2]"))
    before = len(responses)
    assert (await fetch_all(provider, done.outputs[0])).ext == "png"
    assert len(responses) == before + 3 and all(r.is_closed for r in responses)


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
        with pytest.raises(RetryableProviderError, match=r"timed out after 0\.5s"):
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
