"""Tracing across processes: an API and a worker of their own export to a fake OTLP/HTTP collector
(a real HTTP server here, decoding the protobuf the exporter sends), and one job's spans must form
one trace from `POST /api/v1/generate` to the stored output. Without an endpoint, nothing is
traced: the API's task messages carry no trace context.

The traced API and worker use a Redis database of their own, so no other worker of the session
takes their messages (the test reads them from the queue before its worker starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.otlp import CONSUMER, SERVER, Collector, Span, collecting
from tests.support import TERMINAL, Proc, publish, wait_for


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, str]]:
    with collecting() as found:
        yield found


PREDICTION = "mg-" + "0" * 32 + "-1"
TOKEN = "aSecretCogToken_" + "x" * 27  # the shape of `cog.webhook_token`
SIGNATURE = "aSecretSignature" + "0" * 48
HOOK_ROUTE = "/api/v1/webhooks/cog/{prediction_id}/{token}"

# A normal job's start waits in the `mediagen` queue's list for its priority.
NORMAL_STARTS = "mediagen\x06\x163"


def _message_for(broker: redis.Redis, job_id: str) -> tuple[bytes, dict[str, Any]]:
    """The start message of `job_id` (published just after the API answered)."""
    found: list[tuple[bytes, dict[str, Any]]] = []

    def published() -> bool:
        for raw in broker.lrange(NORMAL_STARTS, 0, -1):
            message = json.loads(raw)
            if job_id in message["headers"]["argsrepr"]:
                found.append((raw, message))
                return True
        return False

    wait_for(published, 5, what=f"the start message of {job_id}")
    return found[0]


def _wait_completed(http: httpx.Client, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := http.get(f"/api/v1/jobs/{job_id}").json()["status"]) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.1)
    assert status == "completed"


def _statement(span: Span) -> str:
    return str(span.attributes.get("db.statement") or span.attributes.get("db.query.text") or "")


@dataclass
class Traced:
    spans: list[Span]
    jobs: dict[str, str]  # "normal" / "redispatched" -> job id
    start_header: str  # the traceparent on the normal job's start message


@pytest.fixture(scope="module")
def traced(database: str, collector: tuple[Collector, str]) -> Iterator[Traced]:
    """Two jobs through a traced API and worker: one as submitted, one whose start message is
    replaced by one without trace context (as the sweeper re-dispatches)."""
    sink, endpoint = collector
    redis_url = REDIS.fresh()
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    env = {
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "WORKER_METRICS_PORT": "0",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",  # URL attributes of both conventions
    }
    api, url = start_api("api-traced", env)
    worker: Proc | None = None
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            # Two URLs that carry a secret: a Cog webhook's (a token of its prediction in the
            # path) and a signed media URL's (its signature).
            hook = http.post(f"/api/v1/webhooks/cog/{PREDICTION}/{TOKEN}", json={"id": "x"})
            assert hook.status_code == 401, hook.text
            media = http.get(f"/media/{PREDICTION}.png", params={"expires": "9999999999",
                                                                 "sig": SIGNATURE})
            assert media.status_code == 403, media.text
            jobs = {}
            for kind in ("normal", "redispatched"):
                response = http.post("/api/v1/generate", json={"prompt": f"trace {kind}"})
                assert response.status_code == 201, response.text
                jobs[kind] = response.json()["job_id"]
            _, message = _message_for(broker, jobs["normal"])
            start_header = message["headers"].get("traceparent")
            assert start_header, message["headers"]
            raw, _ = _message_for(broker, jobs["redispatched"])
            assert broker.lrem(NORMAL_STARTS, 1, raw) == 1
            import asyncio

            from mediagen.broker import Task
            from mediagen.jobs.dispatch import START

            assert asyncio.run(publish(redis_url, Task(START, (jobs["redispatched"],))))
            worker = start_worker("worker-traced", broker, env)
            for job_id in jobs.values():
                _wait_completed(http, job_id)

        def exported() -> bool:  # both services, through each job's whole start step
            spans = sink.snapshot()
            puts = [str(s.attributes.get("mediagen.storage.key")) for s in spans
                    if s.name == "storage.put"]
            steps = {str(s.attributes.get("mediagen.job_id")) for s in spans
                     if s.name == "job.start"}  # exported once it ended (after a thumbnail)
            return (
                {s.service for s in spans} >= {"mediagen-api", "mediagen-worker"}
                and all(any(job_id in key for key in puts) for job_id in jobs.values())
                and set(jobs.values()) <= steps
                and any(s.attributes.get("http.route") == HOOK_ROUTE for s in spans)
                and any(str(s.attributes.get("url.path")).startswith("/media/") for s in spans)
            )

        wait_for(exported, 15, what="spans of both jobs at the collector")
        yield Traced(sink.snapshot(), jobs, start_header)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        broker.flushdb()
        broker.close()


def _submit_span(spans: list[Span], job_id: str) -> Span:
    """The API's server span of the POST that created `job_id` (the trace its row recorded)."""
    job_traces = {s.trace_id for s in spans if s.attributes.get("mediagen.job_id") == job_id}
    posts = [s for s in spans if s.service == "mediagen-api" and s.kind == SERVER
             and s.name == "POST /api/v1/generate" and s.trace_id in job_traces]
    assert len(posts) == 1, (job_id, posts)
    return posts[0]


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[str]:
    names = []
    while span.parent_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_one_trace_from_the_post_to_the_stored_output(traced: Traced) -> None:
    job_id = traced.jobs["normal"]
    post = _submit_span(traced.spans, job_id)
    trace = [s for s in traced.spans if s.trace_id == post.trace_id]
    by_id = {s.span_id: s for s in trace}
    assert traced.start_header.split("-")[1] == post.trace_id  # carried by the Celery message

    # Consistent: one root (the POST), every other span's parent in the trace.
    assert [s for s in trace if not s.parent_id] == [post]
    assert all(s.parent_id in by_id for s in trace if s.parent_id), trace

    insert = [s for s in trace if s.service == "mediagen-api"
              and _statement(s).lstrip().upper().startswith(("INSERT", "WITH"))
              and "INSERT INTO" in _statement(s).upper()]
    assert insert, [(s.name, _statement(s)) for s in trace]
    assert post.name in _ancestors(insert[0], by_id)

    runs = [s for s in trace if s.service == "mediagen-worker" and s.kind == CONSUMER]
    assert "run/mediagen.jobs.start" in {s.name for s in runs}, [s.name for s in trace]
    (step,) = [s for s in trace if s.name == "job.start"]
    assert step.attributes["mediagen.job_id"] == job_id
    assert by_id[step.parent_id].name == "run/mediagen.jobs.start"
    (put,) = [s for s in trace if s.name == "storage.put"]
    assert put.attributes["mediagen.storage.bytes"] > 0
    assert str(put.attributes["mediagen.storage.key"]).startswith(job_id)
    # Opened on the worker's event loop thread, under the step the pool thread opened.
    assert _ancestors(put, by_id)[:3] == ["job.start", "run/mediagen.jobs.start", post.name]
    # The worker's own database statements are in the trace too.
    assert any(s.service == "mediagen-worker" and _statement(s) for s in trace)


def test_no_secret_of_a_url_reaches_a_span(traced: Traced) -> None:
    """The server spans' URL attributes (old and new conventions) show the Cog webhook's token
    and the media URL's signature as REDACTED; no attribute of any span holds either."""
    [hook] = [s for s in traced.spans if s.attributes.get("http.route") == HOOK_ROUTE]
    assert hook.attributes["http.target"] == hook.attributes["url.path"] == (
        f"/api/v1/webhooks/cog/{PREDICTION}/REDACTED"
    )
    [media] = [s for s in traced.spans if str(s.attributes.get("url.path")).startswith("/media/")]
    assert media.attributes["url.query"] == "expires=9999999999&sig=REDACTED"
    assert "sig=REDACTED" in media.attributes["http.url"]
    leaks = [(s.name, name) for s in traced.spans for name, value in s.attributes.items()
             if TOKEN in str(value) or SIGNATURE in str(value)]
    assert leaks == []


def test_a_step_without_trace_context_rejoins_its_jobs_trace(traced: Traced) -> None:
    job_id = traced.jobs["redispatched"]
    post = _submit_span(traced.spans, job_id)
    (step,) = [s for s in traced.spans if s.name == "job.start"
               and s.attributes.get("mediagen.job_id") == job_id]
    assert step.trace_id == post.trace_id
    assert step.parent_id == post.span_id  # the row's traceparent: the POST's server span
    # The task's own span started a trace of its own (nothing in the message), linked.
    ((linked_trace, linked_span),) = step.links
    run = next(s for s in traced.spans if s.span_id == linked_span)
    assert (run.name, run.parent_id, run.trace_id) == ("run/mediagen.jobs.start", "",
                                                       linked_trace)
    assert linked_trace != post.trace_id
    (put,) = [s for s in traced.spans if s.name == "storage.put"
              and str(s.attributes["mediagen.storage.key"]).startswith(job_id)]
    assert put.trace_id == post.trace_id


def test_off_without_an_endpoint(database: str) -> None:
    """No OTLP endpoint: no trace context on the messages the API publishes, not even the
    caller's (which a traced API would carry on)."""
    redis_url = REDIS.fresh()
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    api, url = start_api("api-untraced", {
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        "WORKER_METRICS_PORT": "0",
    })
    try:
        response = httpx.post(f"{url}/api/v1/generate", json={"prompt": "untraced"},
                              headers={"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"})
        assert response.status_code == 201, response.text
        _, message = _message_for(broker, response.json()["job_id"])
        headers = message["headers"]
        assert headers["task"] == "mediagen.jobs.start"
        assert not {"traceparent", "tracestate"} & set(headers), headers
    finally:
        api.stop()
        broker.flushdb()
        broker.close()


_PROBE = """
import json, sys, asyncpg, httpx, redis.asyncio
from celery import signals
from opentelemetry import trace
from mediagen.observability import context, tracing

if sys.argv[1] == "api":
    from mediagen.main import create_app

    stack = type(create_app().build_middleware_stack()).__module__
else:  # what the worker's process signals do
    import mediagen.worker

    stack = None
    tracing.configure("worker")

# A request through the Outbound client (httpx on aiohttp's transport), inside a span.
import asyncio, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from mediagen.outbound import Outbound, Policy

seen = []

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append(self.headers.get("traceparent"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

async def call():
    outbound = Outbound()
    with tracing.span("probe") as span:
        url = f"http://127.0.0.1:{server.server_port}/"
        # Our own service (the context goes along), then anyone else (it does not).
        await outbound.call("GET", url, Policy(deadline=5, max_bytes=100, pin=False,
                                               trace_context=True))
        await outbound.call("GET", url, Policy(deadline=5, max_bytes=100, pin=False))
    await outbound.close()
    return format(span.get_span_context().trace_id, "032x")

trace_id = asyncio.run(call())
print(json.dumps({
    "provider": type(trace.get_tracer_provider()).__name__,
    "stack": stack,
    "asyncpg": hasattr(asyncpg.connection.Connection.execute, "__wrapped__"),
    "redis": hasattr(redis.asyncio.Redis.execute_command, "__wrapped__"),
    "httpx": hasattr(httpx.AsyncHTTPTransport.handle_async_request, "__wrapped__"),
    "celery": any("opentelemetry" in repr(r) for r in signals.task_prerun.receivers),
    "headers": len(context._header_sources),
    "outbound": seen[0] is not None and seen[0].split("-")[1] == trace_id,
    "to_others": seen[1],
}))
"""


@pytest.mark.parametrize("role", ["api", "worker"])
@pytest.mark.parametrize("on", [False, True])
def test_nothing_is_instrumented_when_off(
    on: bool, role: str, collector: tuple[Collector, str]
) -> None:
    """Off, the API's and a worker's set-up leave every library as it was (no cost at all);
    on, the same set-up instruments each of them."""
    endpoint = collector[1] if on else ""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_SDK_DISABLED": ""}
    done = subprocess.run([sys.executable, "-c", _PROBE, role], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    state = json.loads(done.stdout.strip().splitlines()[-1])
    stack = state.pop("stack")  # the API's outermost ASGI layer
    assert stack is None if role == "worker" else (stack == "opentelemetry.instrumentation.asgi") == on
    assert state == {
        "provider": "TracerProvider" if on else "ProxyTracerProvider",
        "asyncpg": on, "redis": on, "httpx": on, "celery": on and role == "worker",
        "headers": int(on),
        "outbound": on,  # a client span (its context sent along) for the aiohttp transport
        "to_others": None,  # no context to a host that is not ours, on or off
    }, done.stderr[-2000:]
