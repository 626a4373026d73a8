"""URL-like parameter values: each one is an input file fetched through the address guard, or
refused at submit (422 `input_url_refused`), on every surface (`/api/v1/generate`, batches,
`/v1` predictions). None is passed to a model's server, which would fetch it from inside the
GPU network: a local HTTP server standing in for a Cog server records what reaches it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import InProcess, in_process
from tests.support import wait_terminal

# Values a model's server would fetch (seen reaching a Cog server verbatim), in every disguise
# a URL parser reads through: scheme case, user information, spaces and tabs, backslashes.
HOSTILE = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://10.0.0.5:6379/",
    "https://user@169.254.169.254/",
    "HTTPS://user@169.254.169.254/latest/meta-data/",
    "HTTP://169.254.169.254/",
    "  http://169.254.169.254/",
    "h\ttp://169.254.169.254/",
    "http:\\\\169.254.169.254\\",
    "http:169.254.169.254",
    "ftp://10.0.0.5/x.png",
    "file:///etc/passwd",
    "file:/etc/passwd",
    "gopher://10.0.0.5:6379/_INFO",
    "s3://bucket/key.png",
    "javascript:alert(1)",
    "data:text/plain,not-base64",
    "mediagen://elsewhere/x",
]
# A URL inside a list (or deeper) is never a file: refused, whatever its scheme.
LISTED_URLS = ["http://169.254.169.254/", "https://example.com/a.png", "HTTPS://user@10.0.0.5/"]
LISTED = [["a cat", LISTED_URLS[0]], [LISTED_URLS[1]], [1, 2, LISTED_URLS[2]]]
# Text is not a URL: these pass to the model as they are.
TEXT = {
    "note": "in the style of http://example.com/gallery, at dusk",
    "aspect_ratio": "16:9",
    "style": "style: anime",
    "tags": ["a cat", "see https://example.com"],
}


def _refused(response: httpx.Response, name: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    if response.headers["content-type"] == "application/problem+json":  # /v1
        assert body["type"] == "urn:mediagen:error:input_url_refused", body
    else:
        assert body["code"] == "input_url_refused", body
    assert f"'{name}'" in body["detail"], body


@pytest.mark.parametrize("value", HOSTILE + LISTED, ids=repr)
async def test_url_like_values_are_refused_on_every_surface(
    client: httpx.AsyncClient, value: object
) -> None:
    job = {"prompt": "p", "parameters": {"width": 64, "height": 64, "image": value}}
    _refused(await client.post("/api/v1/generate", json=job), "image")
    batch = await client.post("/api/v1/batches", json={"jobs": [{"prompt": "ok"}, job]})
    _refused(batch, "image")
    assert batch.json()["detail"].startswith("jobs[1]: ")
    prediction = {"input": {"prompt": "p", "width": 64, "height": 64, "image": value}}
    _refused(await client.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions", json=prediction), "image")
    _refused(await client.post(
        "/v1/predictions", json={"version": "black-forest-labs/flux-schnell", **prediction}),
        "image")


async def test_https_in_any_case_is_fetched_through_the_guard(client: httpx.AsyncClient) -> None:
    """Not ignored (the job used to complete without the caller's image): fetched, so the
    guard refuses the loopback address it names (the session's DOWNLOAD_ALLOW_PRIVATE is off)."""
    created = await client.post("/api/v1/generate", json={
        "prompt": "guarded", "parameters": {"width": 64, "height": 64,
                                            "image": "HTTPS://localhost:9/image.png"}})
    assert created.status_code == 201, created.text
    job = await wait_terminal(client, created.json()["job_id"], 30)
    assert job["parameters"]["image"] == "https://localhost:9/image.png"
    assert job["status"] == "failed", job
    assert "input 'image'" in job["error"] and "non-public address" in job["error"], job


# --- what a Cog server receives ------------------------------------------------------------

class CogStandIn:
    """A Cog server's HTTP surface as the provider uses it: `PUT /predictions/{id}` accepted
    (202, it reports by webhook), no published schema (so every input is sent), healthy.
    Records every body it was sent."""

    def __init__(self) -> None:
        owner = self
        self.bodies: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: object) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path == "/health-check":
                    self._answer(200, {"status": "READY"})
                else:
                    self._answer(404, {"detail": "Not Found"})

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.bodies.append(self.rfile.read(length).decode())
                self._answer(202, {"status": "starting"})

            def do_POST(self) -> None:
                self.do_PUT()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cog() -> Iterator[CogStandIn]:
    server = CogStandIn()
    yield server
    server.close()


@pytest.fixture(scope="module")
async def routed(database: str, cog: CogStandIn, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[InProcess]:
    """The application and its worker, with `acme/gpu` on the stand-in Cog server."""
    models: Path = tmp_path_factory.mktemp("cog-urls") / "models.toml"
    models.write_text(
        '[models."acme/gpu"]\nprovider = "cog"\ndefault = true\ndeadline = 60\n'
        f'[[models."acme/gpu".endpoints]]\nurl = "{cog.url}"\nslots = 4\n'
    )
    env = {"MODELS_FILE": str(models), "PUBLIC_BASE_URL": "http://127.0.0.1:9",
           "COG_WEBHOOK_SECRET": "s" * 32}
    async with in_process(env, worker=True) as app:
        yield app


async def test_a_cog_server_never_receives_a_url_it_would_fetch(
    routed: InProcess, cog: CogStandIn
) -> None:
    async with routed.client() as http:
        for value in HOSTILE + LISTED:
            answer = await http.post("/api/v1/generate", json={
                "prompt": "p", "model": "acme/gpu", "parameters": {"image": value}})
            _refused(answer, "image")
            answer = await http.post("/v1/models/acme/gpu/predictions",
                                     json={"input": {"prompt": "p", "image": value}})
            _refused(answer, "image")
        # A job of plain text (URLs inside sentences, colons) reaches the server unchanged.
        control = await http.post("/api/v1/generate", json={
            "prompt": "control", "model": "acme/gpu", "parameters": TEXT})
        assert control.status_code == 201, control.text
        deadline = time.monotonic() + 20
        while not any('"control"' in body for body in cog.bodies):
            assert time.monotonic() < deadline, "the control job never reached the Cog server"
            await asyncio.sleep(0.05)
    received: list[dict[str, Any]] = [json.loads(body)["input"] for body in cog.bodies]
    [given] = [given for given in received if given["prompt"] == "control"]
    assert {name: given[name] for name in TEXT} == TEXT
    sent = "\n".join(cog.bodies)
    for url in HOSTILE + LISTED_URLS:
        assert json.dumps(url) not in sent, url
