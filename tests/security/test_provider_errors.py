"""A job's public `error` names no internal address and repeats no upstream body: a Cog server
that answers 500 with a body naming a path on the GPU host fails the job with the endpoint's
short key and a plain reason, on both APIs; the worker's log line has the details.

In-process (the application and its worker on the test's loop), against a real local HTTP
server playing a Cog server whose model is broken.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mediagen.providers.cog.ids import endpoint_key
from tests.stack import InProcess, in_process, new_key
from tests.support import free_port, wait_terminal

MODEL = "acme/leaky"
INTERNAL = "/srv/gpu-7/models/acme-leaky/weights.safetensors"
BODY = f"RuntimeError: cannot load {INTERNAL} (CUDA_VISIBLE_DEVICES=3)"


@pytest.fixture(scope="module")
def broken_cog() -> Iterator[str]:
    """A Cog-like server: healthy, no schema, and every prediction answered 500 with BODY."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health-check":
                self._answer(200, b'{"status": "READY"}', "application/json")
            else:
                self._answer(404, b"not found")

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(500, BODY.encode())

        do_POST = do_PUT

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
async def stack(database: str, broken_cog: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    models = tmp_path_factory.mktemp("leaky") / "models.toml"
    models.write_text(f'[models."{MODEL}"]\nprovider = "cog"\n'
                      f'[[models."{MODEL}".endpoints]]\nurl = "{broken_cog}"\nslots = 1\n')
    env = {"MODELS_FILE": str(Path(models)), "PUBLIC_BASE_URL": "http://127.0.0.1:9",
           "COG_WEBHOOK_SECRET": "leaky-test-secret", "MAX_RETRIES": "0",
           "LOG_FORMAT": "json", "AUTH_REQUIRED": "true"}
    async with in_process(env, worker=True) as app:
        yield app


class _Lines(logging.Handler):
    """The records of mediagen's loggers while installed (rendered later by the process's own
    handler, as the worker writes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_upstream_500_body_and_url_stay_out_of_the_public_error(
    stack: InProcess, broken_cog: str
) -> None:
    key = await new_key(f"leaky-{uuid.uuid4().hex[:6]}")
    lines = _Lines()
    logging.getLogger("mediagen").addHandler(lines)
    try:
        async with stack.client(headers={"Authorization": f"Bearer {key}"}) as http:
            made = await http.post("/api/v1/generate",
                                   json={"prompt": "a leaky model", "model": MODEL})
            assert made.status_code == 201, made.text
            job_id = made.json()["job_id"]
            job = await wait_terminal(http, job_id)
            prediction = (await http.get(f"/v1/predictions/{job_id}")).json()
    finally:
        logging.getLogger("mediagen").removeHandler(lines)
    assert job["status"] == "failed", job
    host = broken_cog.removeprefix("http://")
    for error in (job["error"], prediction["error"]):
        assert error, (job, prediction)
        assert host not in error and INTERNAL not in error and "CUDA" not in error, error
        assert endpoint_key(broken_cog) in error and "HTTP 500" in error, error

    [ours] = [h for h in logging.getLogger().handlers
              if type(h).__module__ == "mediagen.observability.logs"]
    render = ours.format
    mine = [json.loads(render(r)) for r in lines.records
            if getattr(r, "job_id", None) == job_id or job_id in str(r.__dict__)]
    failed = [line for line in mine if line["event"] == "job failed"]
    assert failed, mine
    assert any(host in json.dumps(line) and INTERNAL in json.dumps(line) for line in failed), failed
