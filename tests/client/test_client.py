"""mediagen.client against the real running stack (API, worker, Postgres, Redis): submit, live
events, a dropped stream resumed, downloads, failures, cancel, pages, 429."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediagen.client import (
    AsyncClient,
    Client,
    ConflictError,
    Job,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
)
from mediagen.jobs.retention import EXPIRED_NOTE
from tests.conftest import REDIS, start_api
from tests.stack import new_key
from tests.support import Proc, expire, in_one_rate_window

SMALL = {"width": 64, "height": 64}



@pytest.fixture(scope="module")
def idle_api(database: str) -> Iterator[str]:
    """An API whose queue no worker consumes: its jobs stay pending."""
    proc, url = start_api("client-api-idle", {"REDIS_URL": REDIS.fresh()})
    yield url
    proc.stop()


@pytest.fixture
async def mg(api: str, worker: Proc) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api, api_key="") as client:
        yield client


async def _media(api: str, url: str) -> bytes:
    async with httpx.AsyncClient(base_url=api) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def test_models_are_what_the_service_lists(mg: AsyncClient, api: str) -> None:
    async with httpx.AsyncClient(base_url=api) as http:
        listed = (await http.get("/api/v1/models")).json()["data"]
    models = await mg.models()
    assert [(m.name, m.provider, m.default) for m in models] == [
        (m["name"], m["provider"], m["default"]) for m in listed
    ]
    assert [m.input_schema for m in models] == [m["input_schema"] for m in listed]
    with Client(api, api_key="") as sync:
        assert sync.models() == models


async def test_submit_wait_through_events_and_download(
    mg: AsyncClient, api: str, tmp_path: Path
) -> None:
    job = await mg.generate("a client's red fox", num_outputs=2, **SMALL)
    assert uuid.UUID(job.id) and job.prompt == "a client's red fox"
    assert job.parameters["width"] == 64
    seen: list[tuple[str, dict[str, Any]]] = []
    final = await mg.wait(job.id, progress=lambda event, data: seen.append((event, data)))
    assert final.status == "completed" and final.done
    statuses = [data["status"] for event, data in seen if event == "status"]
    assert statuses and statuses[-1] == "completed", seen
    assert all(data["job_id"] == job.id for event, data in seen if event == "status")

    paths = await mg.download(final, tmp_path / "out")
    assert [p.name for p in paths] == [f"{job.id}-0.png", f"{job.id}-1.png"]
    assert len(final.outputs) == 2
    for path, output in zip(paths, final.outputs, strict=True):
        assert path.read_bytes() == await _media(api, output.url)
        assert path.stat().st_size == output.size
        assert output.thumbnail_url is None  # (64 px: already small)
    assert paths[0].read_bytes() == await _media(api, final.result_url or "")
    assert not list((tmp_path / "out").glob("*.part"))


async def test_an_image_output_has_a_thumbnail(mg: AsyncClient, api: str) -> None:
    job = await mg.wait((await mg.generate("a client's large fox", width=320, height=320)).id)
    [output] = job.outputs
    thumbnail = await _media(api, output.thumbnail_url or "")  # a small WebP of it
    assert thumbnail[:4] == b"RIFF" and thumbnail[8:12] == b"WEBP"


async def test_a_failed_job_raises_job_failed_error(mg: AsyncClient) -> None:
    job = await mg.generate("[fault:permanent] a doomed kite", **SMALL)
    with pytest.raises(JobFailedError) as caught:
        await mg.wait(job.id, raise_on_failure=True, timeout=30)
    assert caught.value.code == "job_failed"
    assert caught.value.job.status == "failed" and caught.value.job_status == "failed"
    assert caught.value.job.error
    # Without raise_on_failure the job is returned.
    assert (await mg.wait(job.id)).status == "failed"
    with pytest.raises(NotFoundError) as missing:
        await mg.get(str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code) == (404, "not_found")


@pytest.fixture
async def expired_job(mg: AsyncClient) -> str:
    """A job that completed, then expired: retention deleted its outputs."""
    job = await mg.generate("a client's fox kept a minute", retention=60, **SMALL)
    assert (await mg.wait(job.id, timeout=30)).status == "completed"
    await expire(job.id)
    return job.id


async def test_wait_returns_an_expired_job(mg: AsyncClient, expired_job: str) -> None:
    """Expired is finished (it completed; its outputs are gone): wait returns it at once rather
    than following it forever; raise_on_failure raises, as there is nothing to download."""
    final = await mg.wait(expired_job, timeout=10)
    assert final.status == "expired" and final.done
    assert final.outputs == [] and final.result_url is None and final.error == EXPIRED_NOTE
    with pytest.raises(JobFailedError) as caught:
        await mg.wait(expired_job, raise_on_failure=True, timeout=10)
    assert caught.value.code == "job_expired" and caught.value.job.status == "expired"
    assert EXPIRED_NOTE in str(caught.value)


async def test_sync_wait_returns_an_expired_job(api: str, expired_job: str) -> None:
    def wait() -> tuple[Job, Job]:
        with Client(api, api_key="") as client:
            return client.wait(expired_job, timeout=10), client.get(expired_job).wait(timeout=10)

    waited, bound = await asyncio.to_thread(wait)
    assert waited.status == bound.status == "expired" and waited.done and bound.done


async def test_cancel(idle_api: str) -> None:
    async with AsyncClient(idle_api) as mg:
        job = await mg.generate("a patient heron", **SMALL)
        assert job.status == "pending"
        canceled = await mg.cancel(job.id)
        assert canceled.status == "canceled"
        with pytest.raises(ConflictError) as again:
            await mg.cancel(job.id)
        assert again.value.status == 409 and again.value.body["status"] == "canceled"
        with pytest.raises(JobFailedError) as caught:
            await mg.wait(job.id, raise_on_failure=True, timeout=15)
        assert caught.value.code == "job_canceled"


async def test_list_follows_pages(api: str, worker: Proc) -> None:
    secret = await new_key("client-lister")
    async with AsyncClient(api, api_key=secret) as mg:
        made = [(await mg.generate(f"page job {n}", **SMALL)).id for n in range(5)]
        listed = [job.id async for job in mg.list(limit=2)]
        assert listed == made[::-1]  # newest first, across three pages
        for job_id in made:
            await mg.wait(job_id, timeout=30)
        done = [job async for job in mg.list(status="completed", limit=2)]
        assert {job.id for job in done} == set(made)
        assert all(job.status == "completed" and job.prompt for job in done)


async def test_rate_limit_raises_with_retry_after(database: str) -> None:
    proc, url = start_api(
        "client-api-rate", {"RATE_LIMIT_PER_MINUTE": "2", "REDIS_URL": REDIS.fresh()}
    )
    try:
        async with AsyncClient(url, max_retries=0) as mg:
            await in_one_rate_window()
            await mg.generate("one", **SMALL)
            await mg.generate("two", **SMALL)
            with pytest.raises(RateLimitedError) as limited:
                await mg.generate("three", **SMALL)
    finally:
        proc.stop()
    assert limited.value.status == 429 and limited.value.code == "rate_limited"
    assert limited.value.retry_after is not None and limited.value.retry_after > 0


async def test_429_and_503_are_retried_after_retry_after_with_one_idempotency_key() -> None:
    """The retry loop itself (the real server's Retry-After is about a minute): a transport
    that answers 429, then 503, then the job."""
    seen: list[httpx.Request] = []
    job_id = str(uuid.uuid4())
    detail = {"job_id": job_id, "status": "pending", "result_url": None, "outputs": []}

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/v1/generate":
            if len(seen) == 1:
                return httpx.Response(
                    429,
                    headers={"Retry-After": "0.2"},
                    json={"detail": "slow down", "code": "rate_limited"},
                )
            if len(seen) == 2:
                raise httpx.ReadError("connection reset")
            if len(seen) == 3:
                return httpx.Response(
                    503,
                    headers={"Retry-After": "0"},
                    json={"detail": "db down", "code": "database_unavailable"},
                )
            return httpx.Response(201, json={"job_id": job_id, "status": "pending"})
        return httpx.Response(200, json=detail)

    async with AsyncClient("http://mediagen.test", transport=httpx.MockTransport(answer)) as mg:
        job = await mg.generate("retry me")
    assert job.id == job_id
    submits = [r for r in seen if r.url.path == "/api/v1/generate"]
    assert len(submits) == 4
    assert len({r.headers["idempotency-key"] for r in submits}) == 1
    assert json.loads(submits[0].content) == {"prompt": "retry me", "parameters": {}}


class CuttingProxy:
    """A TCP proxy in front of the API that cuts the first event stream it carries right after
    its first event, and records each events request."""

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.removeprefix("http://").split(":")
        self.port = int(port)
        self.events_requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        first = await reader.read(65536)
        cut = b"/events" in first and not self.events_requests
        if b"/events" in first:
            self.events_requests.append(first)
        up_writer.write(first)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            buffer = b""
            while data := await up_reader.read(65536):
                if cut:
                    buffer += data
                    head, sep, body = buffer.partition(b"\r\n\r\n")
                    start = body.find(b"data:")
                    ends = [
                        (i, len(t))
                        for t in (b"\r\n\r\n", b"\n\n")
                        if start >= 0 and (i := body.find(t, start)) >= 0
                    ]
                    if sep and ends:
                        end, size = min(ends)
                        writer.write(head + sep + body[: end + size])  # one event, chunk open
                        await writer.drain()
                        return
                    continue
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_dropped_stream_is_resumed_with_last_event_id(idle_api: str) -> None:
    proxy = CuttingProxy(idle_api)
    proxied = await proxy.start()
    try:
        async with AsyncClient(idle_api) as direct, AsyncClient(proxied) as through:
            job = await direct.generate("a heron that waits", **SMALL)
            seen: list[tuple[str, dict[str, Any]]] = []
            waiting = asyncio.ensure_future(
                through.wait(job.id, progress=lambda e, d: seen.append((e, d)), timeout=30)
            )
            for _ in range(200):
                if len(proxy.events_requests) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(proxy.events_requests) >= 2, proxy.events_requests
            await direct.cancel(job.id)
            final = await waiting
    finally:
        await proxy.stop()
    assert final.status == "canceled"
    first, second = proxy.events_requests[:2]
    assert b"last-event-id" not in first.lower()
    resumed = [line for line in second.split(b"\r\n") if line.lower().startswith(b"last-event-id")]
    assert resumed, second
    assert [d["status"] for e, d in seen if e == "status"] == ["pending", "canceled"], seen


def test_sync_client_submit_wait_download(api: str, worker: Proc, tmp_path: Path) -> None:
    with Client(api, api_key="") as client:
        job = client.generate("a synchronous swan", output_format="webp", **SMALL)
        events: list[str] = []
        final = job.wait(progress=lambda event, data: events.append(data.get("status", event)))
        assert final.status == "completed" and events[-1] == "completed"
        [path] = final.download(tmp_path)
        assert path.name == f"{job.id}-0.webp"
        media = httpx.get(api + (final.result_url or ""))
        assert path.read_bytes() == media.content
        assert any(listed.id == job.id for listed in client.list(limit=100))
        with pytest.raises(JobFailedError):
            client.generate("[fault:permanent] sync").wait(raise_on_failure=True)


async def test_without_an_events_endpoint_wait_polls() -> None:
    job_id = str(uuid.uuid4())
    reads = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal reads
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found", "code": "not_found"})
        reads += 1
        status = "processing" if reads < 3 else "completed"
        return httpx.Response(200, json={"job_id": job_id, "status": status, "outputs": []})

    seen: list[str] = []
    async with AsyncClient("http://mediagen.test", transport=httpx.MockTransport(answer)) as mg:
        final = await mg.wait(job_id, progress=lambda e, d: seen.append(d["status"]), timeout=20)
    assert final.status == "completed"
    assert seen == ["processing", "completed"]


async def test_a_resume_answered_204_still_reports_the_final_status() -> None:
    """The job finished while the stream was down, before its events reached the server's
    stream: the resume gets 204, and the final status comes from the job as read."""
    job_id = str(uuid.uuid4())
    opened: list[httpx.Request] = []
    pending = {"job_id": job_id, "status": "pending", "retry_count": 0, "error": None,
               "error_code": None, "attempts": 0, "result_url": None, "output": None}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            opened.append(request)
            if len(opened) == 1:  # one event, then the connection ends
                body = f"id: 1-0\nevent: status\ndata: {json.dumps(pending)}\n\n"
                return httpx.Response(
                    200, headers={"content-type": "text/event-stream"}, content=body.encode()
                )
            return httpx.Response(204)
        return httpx.Response(200, json={**pending, "status": "canceled"})

    seen: list[str] = []
    async with AsyncClient("http://mediagen.test", transport=httpx.MockTransport(answer)) as mg:
        final = await mg.wait(job_id, progress=lambda e, d: seen.append(d["status"]), timeout=20)
    assert final.status == "canceled"
    assert opened[1].headers["last-event-id"] == "1-0"
    assert seen == ["pending", "canceled"]
