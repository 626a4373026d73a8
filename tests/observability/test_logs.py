"""Structured logs, read from the real processes' output: an API and a worker of their own (own
Redis, LOG_FORMAT=json) write JSON lines that join by `request_id` (from X-Request-ID, or made)
and `job_id`, from the request that created a job to the worker steps that ran it; the access
log names route templates, never raw paths; prompts appear only with LOG_PROMPTS=true; and
ACCESS_LOG=false silences the access log. `mediagen.observability.http.install` adds no
request observer when the access log and metrics are both off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from mediagen.broker import Task
from mediagen.config import Settings
from mediagen.observability import http as observed
from tests.conftest import ROOT, redis_server, start_api, start_worker
from tests.support import Proc, new_job, publish, wait_terminal

GENERATE = "/api/v1/generate"
BODY_PARAMETERS = {"width": 64, "height": 64}


@dataclass
class Stack:
    url: str
    api: Proc
    worker: Proc
    env: dict[str, str]


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    """A worker and an API on a Redis of their own (no other test's worker takes the jobs),
    writing JSON lines."""
    port, server = redis_server()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "LOG_FORMAT": "json",
        "WORKER_METRICS_PORT": "0",
        "LOG_PROMPTS": "false",
        "ACCESS_LOG": "true",
    }
    client = redis.Redis(port=port)
    worker = start_worker("worker-logs", client, env)
    api, url = start_api("api-logs", env)
    try:
        yield Stack(url, api, worker, env)
    finally:
        api.stop()
        worker.stop()
        client.close()
        server.terminate()
        server.wait(10)


def lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line `proc` wrote, as JSON. Only a worker's startup banner (Celery prints it, not
    a logger) may come before its first JSON line; anything else that is not JSON fails."""
    parsed: list[dict[str, Any]] = []
    for number, text in enumerate(proc.log.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            assert proc.name.startswith("worker") and not parsed, (
                f"{proc.log}:{number} is not JSON: {text!r}"
            )
            continue
        assert isinstance(line, dict), text
        for field in ("timestamp", "level", "logger", "event"):
            assert field in line, f"{proc.log}:{number} has no {field}: {text}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"]), text
        parsed.append(line)
    return parsed


def wait_for_line(proc: Proc, timeout: float = 15, **fields: Any) -> list[dict[str, Any]]:
    """`proc`'s lines, once one of them has all of `fields`."""
    deadline = time.monotonic() + timeout
    while True:
        found = lines(proc)
        if any(all(line.get(k) == v for k, v in fields.items()) for line in found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no line with {fields} in {proc.log}:\n{proc.tail()}")
        time.sleep(0.1)


def access_lines(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in found if line["logger"] == "mediagen.access"]


async def submit(client: httpx.AsyncClient, prompt: str, **headers: str) -> httpx.Response:
    response = await client.post(
        GENERATE, json={"prompt": prompt, "parameters": BODY_PARAMETERS}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response


async def test_a_request_joins_to_the_worker_lines_of_its_job(stack: Stack) -> None:
    mine = f"test-logs.{uuid.uuid4().hex[:12]}"
    marker = f"zebra-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        response = await submit(client, f"a {marker} at dusk", **{"X-Request-ID": mine})
        assert response.headers["x-request-id"] == mine
        job = response.json()["job_id"]
        made = await submit(client, f"another {marker}")
        other_rid = made.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", other_rid), other_rid
        other_job = made.json()["job_id"]
        for job_id in (job, other_job):
            done = await wait_terminal(client, job_id)
            assert done["status"] == "completed"
        media = await client.get(done["result_url"])  # a signed /media URL: the mount
        assert media.status_code == 200
        status = await client.get(f"/api/v1/status/{job}", headers={"X-Request-ID": mine})
        assert status.status_code == 200
        assert status.headers["x-request-id"] == mine

    worker = wait_for_line(stack.worker, job_id=job, event="job completed")
    api = wait_for_line(stack.api, request_id=mine, route="/api/v1/status/{job_id}")

    # The API's lines of that request: the job's creation and the access line, joined by id.
    of_request = [line for line in api if line.get("request_id") == mine]
    created = [line for line in of_request if line["event"] == "job created"]
    assert len(created) == 1, of_request
    assert created[0]["job_id"] == job
    assert created[0]["provider"] == "builtin"
    assert created[0]["logger"] == "mediagen.jobs.service"
    assert created[0]["level"] == "info"
    posted = [
        line
        for line in access_lines(of_request)
        if line["method"] == "POST" and line["route"] == GENERATE
    ]
    assert len(posted) == 1, of_request
    assert posted[0]["status"] == 201
    assert posted[0]["job_id"] == job
    assert isinstance(posted[0]["duration_ms"], float | int) and posted[0]["duration_ms"] > 0

    # The worker's lines about the job carry the request id that created it.
    about_job = [line for line in worker if line.get("job_id") == job]
    assert {"job started", "job completed"} <= {line["event"] for line in about_job}, about_job
    assert all(line.get("request_id") == mine for line in about_job), about_job
    # Celery's own lines are structured too, and its task lines carry the ids as well.
    assert any(line["logger"].startswith("celery") for line in worker), worker
    # The other request: an id was made, returned, and joins its job's lines the same way.
    assert {line.get("request_id") for line in worker if line.get("job_id") == other_job} == {
        other_rid
    }

    # Routes are templates: the job id never appears as (part of) a route.
    routes = {line["route"] for line in access_lines(api)}
    assert "/api/v1/status/{job_id}" in routes
    assert "/api/v1/jobs/{job_id}" in routes  # wait_terminal's reads, through FastAPI
    assert "/openapi.json" in routes  # start_api's, an application route
    assert "/media/{path}" in routes  # the output, from the mount
    assert not [route for route in routes if job in route or other_job in route], routes

    # The prompt is in no line of either process.
    for proc in (stack.api, stack.worker):
        assert marker not in proc.log.read_text(), f"prompt logged by {proc.name}"
    assert created[0]["prompt"] == "[redacted]"


async def test_retries_failures_and_redispatched_steps_keep_the_request_id(
    stack: Stack,
) -> None:
    retried_rid, failed_rid = f"retried-{uuid.uuid4().hex}", f"failed-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        retried = (
            await submit(client, "[fault:transient=1] twice", **{"X-Request-ID": retried_rid})
        ).json()["job_id"]
        failed = (
            await submit(client, "[fault:permanent] never", **{"X-Request-ID": failed_rid})
        ).json()["job_id"]
        assert (await wait_terminal(client, retried))["status"] == "completed"
        assert (await wait_terminal(client, failed))["status"] == "failed"
    # A step whose message has no request id (as the sweeper sends them): the row's is used.
    row = await new_job("re-dispatched", request_id="from-the-row")
    assert await publish(stack.env["REDIS_URL"], Task("mediagen.jobs.start", (str(row.id),)))
    found = wait_for_line(stack.worker, job_id=str(row.id), event="job completed")
    found = wait_for_line(stack.worker, job_id=failed, event="job failed")

    def about(job_id: str) -> list[dict[str, Any]]:
        return [line for line in found if line.get("job_id") == job_id]

    events = [line["event"] for line in about(retried) if line["logger"].startswith("mediagen")]
    assert events == ["job started", "job retrying", "job started", "job completed"], events
    assert {line.get("request_id") for line in about(retried)} == {retried_rid}
    retrying = next(line for line in about(retried) if line["event"] == "job retrying")
    assert retrying["level"] == "warning" and "injected transient fault" in retrying["error"]
    assert retrying["attempt"] == 1 and retrying["retry_in"] > 0
    failure = next(line for line in about(failed) if line["event"] == "job failed")
    assert failure["level"] == "warning" and "injected permanent fault" in failure["error"]
    assert {line.get("request_id") for line in about(failed)} == {failed_rid}
    # (Celery's own "succeeded" line of that task has the job id only: the row's request id is
    # read on the event loop, after the task's thread adopted its message's headers.)
    ours = [line for line in about(str(row.id)) if line["logger"].startswith("mediagen")]
    assert {line.get("request_id") for line in ours} == {"from-the-row"}, ours


async def test_errors_and_refused_ids_get_a_request_id(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        for bad in ("has spaces in it", "x" * 129, "semi;colon"):
            response = await client.get("/api/v1/health", headers={"X-Request-ID": bad})
            made = response.headers["x-request-id"]
            assert made != bad and re.fullmatch(r"[0-9a-f]{32}", made), made
        ok = "A.b-c_1" + "9" * 121  # 128 characters of the allowed alphabet: kept
        response = await client.get("/api/v1/health", headers={"X-Request-ID": ok})
        assert response.headers["x-request-id"] == ok
        cases = {
            "invalid": await client.post(GENERATE, json={"prompt": ""}),  # 422, FastAPI route
            "unknown": await client.get(f"/api/v1/jobs/{uuid.uuid4()}"),  # 404
            "nowhere": await client.get("/no/such/path"),  # 404, no route matched
            "too-large": await client.post(  # 413 from the body-size limit, before any route
                GENERATE, content=b"x" * 100_000, headers={"Content-Type": "application/json"}
            ),
        }
        ids = {name: response.headers.get("x-request-id") for name, response in cases.items()}
    assert [r.status_code for r in cases.values()] == [422, 404, 404, 413]
    assert all(ids.values()), ids
    found = wait_for_line(stack.api, request_id=ids["too-large"])
    by_id = {line["request_id"]: line for line in access_lines(found) if "request_id" in line}
    assert by_id[ids["invalid"]]["route"] == GENERATE
    assert by_id[ids["invalid"]]["status"] == 422
    assert by_id[ids["unknown"]]["route"] == "/api/v1/jobs/{job_id}"
    assert by_id[ids["unknown"]]["status"] == 404
    assert by_id[ids["nowhere"]]["route"] == "other"
    assert by_id[ids["too-large"]]["status"] == 413  # refused before routing: "other" too
    assert by_id[ids["too-large"]]["route"] == "other"


async def test_prompts_are_logged_only_with_log_prompts(stack: Stack) -> None:
    marker = f"okapi-{uuid.uuid4().hex}"
    proc, url = start_api("api-logs-prompts", {**stack.env, "LOG_PROMPTS": "true"})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await submit(client, f"an {marker} grazing")
        found = wait_for_line(proc, event="job created", job_id=response.json()["job_id"])
    finally:
        proc.stop()
    created = [line for line in found if line["event"] == "job created"]
    assert created[0]["prompt"] == f"an {marker} grazing"


async def test_access_log_can_be_turned_off(stack: Stack) -> None:
    proc, url = start_api("api-logs-quiet", {**stack.env, "ACCESS_LOG": "false"})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await submit(client, "a quiet request")
            assert response.headers["x-request-id"]  # ids are still made and returned
            assert (await client.get(f"/api/v1/status/{response.json()['job_id']}")).is_success
        found = wait_for_line(proc, event="job created", job_id=response.json()["job_id"])
    finally:
        proc.stop()
    assert access_lines(found) == []
    assert any(line["logger"].startswith("uvicorn") for line in found)  # server lines: JSON


def _layers(app: Any) -> list[str]:
    names = []
    while app is not None:
        names.append(type(app).__name__)
        app = getattr(app, "app", None)
    return names


def test_no_request_observer_when_access_log_and_metrics_are_off() -> None:
    quiet, loud = FastAPI(), FastAPI()
    observed.install(quiet, Settings(access_log=False, metrics_enabled=False))
    observed.install(loud, Settings(access_log=True, metrics_enabled=False))
    quiet_layers, loud_layers = (
        _layers(quiet.build_middleware_stack()),
        _layers(loud.build_middleware_stack()),
    )
    assert quiet_layers[0] == loud_layers[0] == observed.RequestIds.__name__
    assert "RequestObserver" not in quiet_layers
    assert loud_layers[1] == "RequestObserver"  # inside the request id, outside the rest
    assert "ServerErrorMiddleware" in loud_layers[2:]


def _log_in_a_process(tmp: Path, env: dict[str, str]) -> str:
    """What a process configured for `env` writes to stderr for a few stdlib log calls."""
    script = (
        "import logging\n"
        "from mediagen.config import Settings\n"
        "from mediagen.observability import context, logs\n"
        "logs.configure(Settings(), 'cli')\n"
        "context.request_id.set('rid-1'); context.job_id.set('job-1')\n"
        "logging.getLogger('mediagen.demo').info('hello %s', 'there',"
        " extra={'webhook': 'https://h.example/hook?token=t0k3n', 'attempt': 2})\n"
        "logs.get_logger('mediagen.demo2').warning('bound', api_key='mg_s3cret', n=1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stderr


def test_formats_and_masking(tmp_path: Path) -> None:
    auto = _log_in_a_process(tmp_path, {"LOG_FORMAT": "auto", "LOG_PROMPTS": "false"})
    first, second = (json.loads(text) for text in auto.splitlines())  # stderr is a pipe: JSON
    assert first["event"] == "hello there"
    assert first["logger"] == "mediagen.demo"
    assert (first["request_id"], first["job_id"], first["attempt"]) == ("rid-1", "job-1", 2)
    assert first["webhook"] == "[redacted]"
    assert second["api_key"] == "[redacted]" and second["n"] == 1
    assert second["level"] == "warning" and second["logger"] == "mediagen.demo2"
    assert "t0k3n" not in auto and "s3cret" not in auto

    shown = _log_in_a_process(tmp_path, {"LOG_FORMAT": "json", "LOG_PROMPTS": "true"})
    assert json.loads(shown.splitlines()[0])["webhook"] == "https://h.example/hook?token=t0k3n"

    console = _log_in_a_process(tmp_path, {"LOG_FORMAT": "console", "LOG_PROMPTS": "false"})
    text = console.splitlines()[0]
    assert not text.startswith("{")
    assert "hello there" in text and "request_id=rid-1" in text and "job_id=job-1" in text
