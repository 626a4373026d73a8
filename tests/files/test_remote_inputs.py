"""Input files through the fake Replicate, and `https://` inputs the worker fetches: the model
must receive exactly the bytes, as a URL it can fetch (PUBLIC_BASE_URL set) or as a data: URI
(no public URL). Stacks of their own (API + worker on a Redis of their own)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from mediagen.files.inputs import made_id
from mediagen.files.models import InputFile
from tests.conftest import REDIS, TEST_ENV, start_api, start_worker
from tests.fakes.replicate import FakeReplicate
from tests.files.images import png
from tests.files.tls import TlsFiles
from tests.support import free_port, wait_terminal

MAX_FILE = 256 * 1024
MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
REMOTE = png((10, 200, 10), (120, 80))


@dataclass
class Stack:
    url: str
    fake: FakeReplicate


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(latency=0.2) as server:
        yield server


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFiles]:
    files = {
        "/remote.png": (200, "application/octet-stream", REMOTE),
        "/page.html": (200, "image/png", b"<!doctype html><html></html>" * 3),
        "/boom.png": (500, "text/plain", b"upstream broke"),
    }
    with TlsFiles(tmp_path_factory.mktemp("tls"), files) as server:
        yield server


def _stack(
    name: str, fake: FakeReplicate, remote: TlsFiles, public: bool
) -> Iterator[Stack]:
    broker_url = REDIS.fresh()
    port = free_port()
    settings = {
        "REPLICATE_API_TOKEN": fake.config.token,
        "REPLICATE_BASE_URL": fake.url,
        "DOWNLOAD_ALLOW_PRIVATE": "true",
        "REDIS_URL": broker_url,
        "REPLICATE_TIMEOUT": "5",
        "POLL_INTERVAL": "0.2",
        "MAX_FILE_BYTES": str(MAX_FILE),
        "SSL_CERT_FILE": str(remote.cert),
    }
    if public:
        settings |= {
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "REPLICATE_WEBHOOK_SECRET": fake.config.webhook_secret,
        }
    client = redis.Redis.from_url(broker_url)
    worker = start_worker(f"worker-files-{name}", client, settings)
    api, url = start_api(f"api-files-{name}", settings, port)
    try:
        yield Stack(url, fake)
    finally:
        api.stop()
        worker.stop()
        client.close()


@pytest.fixture(scope="module")
def public(database: str, fake: FakeReplicate, remote: TlsFiles) -> Iterator[Stack]:
    yield from _stack("public", fake, remote, public=True)


@pytest.fixture(scope="module")
def private(database: str, fake: FakeReplicate, remote: TlsFiles) -> Iterator[Stack]:
    yield from _stack("private", fake, remote, public=False)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def _run(http: httpx.AsyncClient, stack: Stack, prompt: str, **params: object) -> dict:
    created = await http.post(
        f"{stack.url}/api/v1/generate", json={"prompt": prompt, "parameters": params}
    )
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        return await wait_terminal(client, created.json()["job_id"], 40)


async def _upload(http: httpx.AsyncClient, stack: Stack, data: bytes) -> dict:
    created = await http.post(f"{stack.url}/api/v1/files", files={"file": ("in.png", data)})
    assert created.status_code == 201, created.text
    return created.json()


async def test_replicate_receives_exactly_the_uploaded_file(
    http: httpx.AsyncClient, public: Stack, private: Stack
) -> None:
    """As a signed /media URL it downloads (PUBLIC_BASE_URL set), else as a data: URI."""
    for mode, stack in (("public", public), ("private", private)):
        data = png((200, 100, len(mode)))
        info = await _upload(http, stack, data)
        prompt = f"replicate input {mode} {uuid.uuid4()}"
        job = await _run(http, stack, prompt, image=info["uri"])
        assert job["status"] == "completed", job
        assert stack.fake.state.received[prompt] == {"image": data}, mode
        assert stack.fake.state.received_as[prompt] == {
            "image": "url" if mode == "public" else "data"
        }


async def test_data_uri_reaches_replicate(http: httpx.AsyncClient, private: Stack) -> None:
    data = png((1, 2, 3))
    prompt = f"inline {uuid.uuid4()}"
    job = await _run(
        http, private, prompt, image="data:image/png;base64," + base64.b64encode(data).decode()
    )
    assert job["status"] == "completed", job
    assert private.fake.state.received[prompt] == {"image": data}


async def test_https_input_is_fetched_stored_and_passed_on(
    http: httpx.AsyncClient, public: Stack, remote: TlsFiles
) -> None:
    prompt = f"remote {uuid.uuid4()}"
    url = remote.url("/remote.png")
    job = await _run(http, public, prompt, image=url)
    assert job["status"] == "completed", job
    assert public.fake.state.received[prompt] == {"image": REMOTE}
    file_id = str(made_id(job["job_id"], "image"))
    info = (await http.get(f"{public.url}/api/v1/files/{file_id}")).json()
    assert info["content_type"] == "image/png" and info["filename"] == "remote.png"
    assert info["size"] == len(REMOTE)
    assert job["parameters"]["image"] == url  # as the client gave it


async def test_https_input_of_a_bad_type_fails_at_once(
    http: httpx.AsyncClient, public: Stack, remote: TlsFiles
) -> None:
    job = await _run(http, public, f"html {uuid.uuid4()}", image=remote.url("/page.html"))
    assert job["status"] == "failed" and job["retry_count"] == 0, job
    assert "input 'image'" in job["error"] and "unsupported media type" in job["error"]


async def test_https_input_404_is_permanent_and_5xx_is_retried(
    http: httpx.AsyncClient, public: Stack, remote: TlsFiles
) -> None:
    missing = await _run(http, public, f"gone {uuid.uuid4()}", image=remote.url("/none.png"))
    assert missing.get("status") == "failed" and missing["retry_count"] == 0, missing
    assert "HTTP 404" in missing["error"]
    before = remote.hits.get("/boom.png", 0)
    broken = await _run(http, public, f"boom {uuid.uuid4()}", image=remote.url("/boom.png"))
    assert broken["status"] == "failed" and broken["retry_count"] == 2, broken  # MAX_RETRIES
    assert "HTTP 500" in broken["error"]
    assert remote.hits["/boom.png"] - before == 3


async def test_oversized_upload_is_refused_and_nothing_kept(
    http: httpx.AsyncClient, public: Stack
) -> None:
    rows = await InputFile.all().count()
    on_disk = (
        sorted(p.name for p in (MEDIA / "files").glob("*")) if (MEDIA / "files").exists() else []
    )
    big = png((5, 5, 5)) + b"\x00" * (MAX_FILE + 1)
    declared = await http.post(f"{public.url}/api/v1/files", files={"file": ("big.png", big)})
    assert declared.status_code == 413, declared.text

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the route's own cap
        boundary = b"--b0undary"
        yield (
            boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="b.png"\r\n\r\n'
        )
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = await http.post(
        f"{public.url}/api/v1/files",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert streamed.status_code == 413, streamed.text
    assert "MAX_FILE_BYTES" in streamed.json()["detail"]
    assert await InputFile.all().count() == rows
    after = (
        sorted(p.name for p in (MEDIA / "files").glob("*")) if (MEDIA / "files").exists() else []
    )
    assert after == on_disk  # no object, and no partial file left behind


async def test_a_file_just_under_the_limit_is_taken(http: httpx.AsyncClient, public: Stack) -> None:
    data = png((9, 9, 9))
    data += b"\x00" * (MAX_FILE - len(data))
    info = await _upload(http, public, data)
    assert info["size"] == MAX_FILE
    assert (await http.get(public.url + info["url"])).content == data
