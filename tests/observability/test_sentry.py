"""Error tracking: an API and a worker of their own report to a fake Sentry (a real HTTP server
reading the envelopes sentry-sdk sends to its DSN). An API request that fails (the storage
refuses an inline input's write: a 500) and a step that raises (the built-in generator's
`[fault:crash]`) each arrive tagged with the request id and the job id, and no envelope holds
the prompt, the API key, or a secret of the request's URL. Without SENTRY_DSN nothing is
imported; with it and without the SDK, one line says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mediagen.observability import context, sentry
from tests.conftest import TMP, Stacks
from tests.fakes.sentry import Sentry, parse, receiving
from tests.stack import Stack, new_key
from tests.support import wait_for

SECRET_PROMPT = "a sealed prompt 7f3a9c nobody may read"
QUERY_TOKEN = "aQueryToken_" + "q" * 20
ENVIRONMENT = "drill"


@pytest.fixture(scope="module")
def fake_sentry() -> Iterator[tuple[Sentry, str]]:
    with receiving() as found:
        yield found


@dataclass
class Tracked:
    stack: Stack
    key: str
    media: Path
    sink: Sentry

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.key}"})


@pytest.fixture(scope="module")
async def tracked(stacks: Stacks, fake_sentry: tuple[Sentry, str]) -> AsyncIterator[Tracked]:
    """An API and a worker reporting to the fake Sentry, keys required, with a media folder
    of their own (the API test breaks it)."""
    sink, dsn = fake_sentry
    media = TMP / f"sentry-media-{uuid.uuid4().hex[:8]}"
    env = {"SENTRY_DSN": dsn, "SENTRY_ENVIRONMENT": ENVIRONMENT, "AUTH_REQUIRED": "true",
           "LOCAL_STORAGE_PATH": str(media)}
    with stacks.own(env, name="sentry") as stack:
        yield Tracked(stack, await new_key("sentry"), media, sink)


def _png() -> str:
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image, "PNG")
    return "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()


def _access_line(log: Path, request_id: str) -> dict[str, Any]:
    """The API's access line of the request `request_id` (JSON lines)."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry.get("event") == "request" and entry.get("request_id") == request_id:
                    found.append(entry)
                    return True
        return False

    wait_for(logged, 10, what=f"the access line of {request_id}")
    return found[0]


def _exception(event: dict[str, Any]) -> tuple[str, str]:
    last = event["exception"]["values"][-1]
    return last["type"], last.get("value", "")


def _assert_nothing_secret(sink: Sentry, *secrets: str) -> None:
    envelopes = sink.snapshot()
    assert envelopes
    for envelope in envelopes:
        for secret in secrets:
            assert secret.encode() not in envelope.raw, (secret, envelope.raw[:3000])


def test_an_api_request_that_fails_is_reported_with_its_ids(tracked: Tracked) -> None:
    # The store refuses every write from now on: its folder is a file.
    shutil.rmtree(tracked.media, ignore_errors=True)
    tracked.media.write_text("not a folder")
    try:
        with tracked.client() as http:
            response = http.post(
                "/api/v1/generate", params={"token": QUERY_TOKEN},
                json={"prompt": SECRET_PROMPT,
                      "parameters": {"width": 64, "height": 64, "image": _png()}})
    finally:
        tracked.media.unlink()
        tracked.media.mkdir()
    assert response.status_code == 500, response.text
    assert response.json()["code"] == "storage_error"
    request_id = response.headers["X-Request-ID"]

    event = tracked.sink.wait_event(
        lambda e: e.get("tags", {}).get("request_id") == request_id,
        what=f"the API's event\n{tracked.stack.api.tail(60)}")  # type: ignore[union-attr]
    # The job the request was about: the one its access line names.
    job_id = _access_line(tracked.stack.api.log, request_id)["job_id"]  # type: ignore[union-attr]
    assert uuid.UUID(job_id)
    assert event["tags"]["job_id"] == job_id
    assert event["tags"]["service"] == "mediagen-api"
    assert event["environment"] == ENVIRONMENT
    assert _exception(event)[0] == "StorageError"
    request = event["request"]
    assert request["method"] == "POST" and request["url"].endswith("/api/v1/generate")
    assert request["query_string"] == "token=REDACTED"
    assert "data" not in request and "cookies" not in request
    assert {name.lower() for name in request["headers"]} <= {
        "accept", "content-length", "content-type", "host", "user-agent", "x-request-id",
        "prefer"}
    _assert_nothing_secret(tracked.sink, SECRET_PROMPT, tracked.key, QUERY_TOKEN)
    assert all(e.auth and "sentry_key=public" in e.auth and e.project == "1"
               for e in tracked.sink.snapshot())


def test_a_step_that_raises_is_reported_with_its_ids(tracked: Tracked) -> None:
    with tracked.client() as http:
        response = http.post("/api/v1/generate", json={
            "prompt": f"{SECRET_PROMPT} [fault:crash]", "parameters": {"width": 64, "height": 64}})
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    request_id = response.headers["X-Request-ID"]

    try:
        event = tracked.sink.wait_event(
            lambda e: e.get("tags", {}).get("job_id") == job_id
            and e["tags"].get("service") == "mediagen-worker", what="the worker's event")
    finally:
        # The job would crash again wherever a sweep sends it next (this database is shared with
        # other modules, whose in-process worker fails on any error): it goes with the test.
        with tracked.client() as http:
            assert http.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert event["tags"]["request_id"] == request_id
    assert _exception(event) == (
        "RuntimeError", "injected crash: an unexpected error in the built-in generator")
    assert event["environment"] == ENVIRONMENT
    _assert_nothing_secret(tracked.sink, SECRET_PROMPT, tracked.key)


def test_a_step_s_ids_come_back_to_its_task_s_thread() -> None:
    """A step that took another job's turn ends under that job's ids, and the task's thread
    (where Celery logs and reports the step's exception) takes them over."""
    from mediagen.worker import Runtime

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runtime = object.__new__(Runtime)  # its loop alone: no worker, no database
    runtime.loop = loop

    async def step() -> None:
        assert context.current() == ("r-message", "j-message")
        context.request_id.set("r-turn")
        context.job_id.set("j-turn")
        raise RuntimeError("a bug")

    def task() -> tuple[str | None, str | None]:
        context.adopt({context.REQUEST_ID_HEADER: "r-message"}, "j-message")
        with pytest.raises(RuntimeError):
            runtime.run(step())
        return context.current()

    try:
        assert contextvars.copy_context().run(task) == ("r-turn", "j-turn")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# --- without the DSN, without the SDK ------------------------------------------------------------
_PROBE = """
import json, sys
from mediagen.main import create_app
create_app().build_middleware_stack()
import mediagen.worker
from celery.signals import setup_logging
setup_logging.send(sender=None)
print(json.dumps({"imported": "sentry_sdk" in sys.modules}))
"""


def test_off_without_a_dsn() -> None:
    """No SENTRY_DSN: the API's and the worker's set-up import nothing of the SDK."""
    env = {**os.environ, "SENTRY_DSN": ""}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"imported": False}


_WITHOUT_SDK = "import sys\nsys.modules['sentry_sdk'] = None\n"
MISSING = ('needs Sentry\'s SDK: pip install "mediagen[sentry]", or unset SENTRY_DSN')


def test_the_commands_refuse_to_start_without_the_sdk() -> None:
    script = _WITHOUT_SDK + "from mediagen.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "SENTRY_DSN": "http://public@127.0.0.1:9/1"}
    for command in ("api", "worker"):
        done = subprocess.run([sys.executable, "-c", script, command], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert (done.returncode, done.stderr) == (
            2, f"mediagen {command} with SENTRY_DSN set {MISSING}\n")


def test_a_process_without_the_sdk_says_so_in_one_line() -> None:
    """Started otherwise (uvicorn, celery), the process logs one line and runs."""
    script = _WITHOUT_SDK + (
        "from mediagen.config import Settings\n"
        "from mediagen.observability import logs, sentry\n"
        "settings = Settings(sentry_dsn='http://public@127.0.0.1:9/1', log_format='json')\n"
        "logs.configure(settings, 'api')\n"
        "print(sentry.configure(settings, 'api'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    (line,) = done.stderr.strip().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["event"] == f"error tracking (SENTRY_DSN) {MISSING}; errors are not reported"


# --- what leaves -----------------------------------------------------------------------------------
def test_an_event_leaves_without_the_request_s_secrets() -> None:
    """`scrub` on an event as Sentry's ASGI integration makes it, for a Cog webhook (its token
    in the path) with a signed query: the ids of the context become tags."""
    token = "aSecretCogToken_" + "x" * 27
    event: Any = {
        "transaction": f"/api/v1/webhooks/cog/p1/{token}",
        "request": {
            "method": "POST",
            "url": f"http://127.0.0.1:8000/api/v1/webhooks/cog/p1/{token}",
            "query_string": "sig=aSignature0000&page=2",
            "headers": {"Authorization": "Bearer mg_key", "Webhook-Signature": "v1,abc",
                        "Cookie": "a=b", "Content-Type": "application/json"},
            "data": {"prompt": SECRET_PROMPT},
            "cookies": {"a": "b"},
            "env": {"REMOTE_ADDR": "10.0.0.1"},
        },
    }
    tokens = (context.request_id.set("r-1"), context.job_id.set("j-1"))
    try:
        scrubbed = sentry.scrub(event, {})
    finally:
        context.request_id.reset(tokens[0])
        context.job_id.reset(tokens[1])
    assert scrubbed["tags"] == {"request_id": "r-1", "job_id": "j-1"}
    assert scrubbed["request"] == {
        "method": "POST",
        "url": "http://127.0.0.1:8000/api/v1/webhooks/cog/p1/REDACTED",
        "query_string": "sig=REDACTED&page=2",
        "headers": {"Content-Type": "application/json"},
    }
    assert scrubbed["transaction"] == "/api/v1/webhooks/cog/p1/REDACTED"
    crumb = sentry.scrub_breadcrumb(
        {"type": "http", "data": {"url": "https://r8.example/v1/x?token=t", "http.query": "token=t"}},
        {})
    assert crumb["data"] == {"url": "https://r8.example/v1/x"}


def test_the_envelope_reader_reads_items_with_and_without_a_length() -> None:
    attachment = b"line one\nline two"  # a payload with a newline of its own: by its length
    raw = (b'{"event_id":"e1"}\n'
           + json.dumps({"type": "attachment", "length": len(attachment)}).encode() + b"\n"
           + attachment + b'\n{"type":"event"}\n{"x":1}\n')
    header, items = parse(raw)
    assert header == {"event_id": "e1"}
    assert items == [({"type": "attachment", "length": len(attachment)}, attachment),
                     ({"type": "event"}, b'{"x":1}')]
