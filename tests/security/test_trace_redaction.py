"""No secret of a URL reaches a trace, and no trace context leaves for someone else's host.

A traced API and worker (processes of their own: tracing is set up once per process) export to
a fake OTLP collector. Requests refused before any route ran (a 404, a 413) carry the Cog upload
token and a prediction's webhook token in their paths; a client webhook's URL carries a token in
its query; the receiver of that webhook records the headers it got.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.otlp import CLIENT, SERVER, Span, collecting
from tests.receiver import Hit, receiving
from tests.support import TERMINAL, wait_for

PREDICTION = "mg-" + "1" * 32 + "-1"
HOOK_TOKEN = "hookTokenOfOnePrediction_" + "h" * 18
UPLOAD_TOKEN = "uploadTokenOfTheCogServers_" + "u" * 16
QUERY_TOKEN = "receiverTokenInTheQuery_" + "q" * 16
SECRETS = (HOOK_TOKEN, UPLOAD_TOKEN, QUERY_TOKEN)
SECRET = "whsec_" + base64.b64encode(b"trace-redaction-test-secret-32b!").decode()
PROPAGATION = ("traceparent", "tracestate", "baggage")


@dataclass
class Traced:
    spans: list[Span]
    refused: dict[str, int]  # the path (secret included) of each refused request -> status
    hits: list[Hit]  # what the client webhook receiver got


def _status(span: Span) -> object:
    return span.attributes.get("http.response.status_code", span.attributes.get("http.status_code"))


def _url(span: Span) -> str:
    return str(span.attributes.get("url.full") or span.attributes.get("http.url") or "")


@pytest.fixture(scope="module")
def traced(database: str) -> Iterator[Traced]:
    with collecting() as (sink, endpoint), receiving() as receiver:
        redis_url = REDIS.fresh()
        broker = redis.Redis.from_url(redis_url)
        broker.flushdb()
        env = {"REDIS_URL": redis_url, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "200", "WORKER_METRICS_PORT": "0",
               "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",  # both conventions' attributes
               "COG_UPLOAD_TOKEN": UPLOAD_TOKEN, "DOWNLOAD_MAX_BYTES": "1024",
               "WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "WEBHOOK_SECRET": SECRET,
               "AUTH_REQUIRED": "false"}
        worker = start_worker("worker-redaction", broker, env)
        api, url = start_api("api-redaction", env)
        try:
            refused: dict[str, int] = {}
            with httpx.Client(base_url=url, timeout=30) as http:
                for method, path, body in (
                    ("POST", f"/api/v1/webhooks/cog/{PREDICTION}/{HOOK_TOKEN}/more", b"{}"),
                    ("GET", f"/api/v1/uploads/cog/{UPLOAD_TOKEN}/a/b.png", None),
                    ("PUT", f"/api/v1/uploads/cog/{UPLOAD_TOKEN}/big.png", b"\0" * 4096),
                ):
                    answer = http.request(method, path, content=body)
                    assert answer.status_code in (404, 405, 413), (path, answer.text)
                    refused[path] = answer.status_code
                assert 413 in refused.values() and 404 in refused.values(), refused
                job = http.post("/api/v1/generate", json={
                    "prompt": "a traced pigeon", "parameters": {"width": 64, "height": 64},
                    "webhook": f"{receiver.url}/hook?token={QUERY_TOKEN}",
                    "webhook_events_filter": ["completed"]})
                assert job.status_code == 201, job.text
                job_id = job.json()["job_id"]
                deadline = time.monotonic() + 30
                while http.get(f"/api/v1/jobs/{job_id}").json()["status"] not in TERMINAL:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            receiver.wait("/hook", 1)

            def exported() -> bool:
                spans = sink.snapshot()
                refusals = [s for s in spans if s.kind == SERVER and _status(s) in (404, 405, 413)]
                hooks = [s for s in spans if s.kind == CLIENT and "/hook" in _url(s)]
                return len(refusals) >= len(refused) and bool(hooks)

            wait_for(exported, 20, what="the refusals' and the webhook's spans")
            yield Traced(sink.snapshot(), refused, receiver.at("/hook"))
        finally:
            api.stop()
            worker.stop()
            broker.flushdb()
            broker.close()


def test_requests_refused_before_routing_keep_no_token_in_their_spans(traced: Traced) -> None:
    refusals = [s for s in traced.spans if s.kind == SERVER and _status(s) in (404, 405, 413)]
    assert refusals
    for span in refusals:
        target = str(span.attributes.get("url.path") or span.attributes.get("http.target"))
        assert "/cog/" in target and "REDACTED" in target, span.attributes
    leaks = [(s.name, name, value) for s in traced.spans for name, value in s.attributes.items()
             if any(secret in str(value) for secret in (HOOK_TOKEN, UPLOAD_TOKEN))]
    assert leaks == []


def test_outgoing_spans_record_urls_without_their_query(traced: Traced) -> None:
    [hook] = [s for s in traced.spans if s.kind == CLIENT and "/hook" in _url(s)]
    for name in ("url.full", "http.url"):
        if name in hook.attributes:
            assert str(hook.attributes[name]).endswith("/hook"), hook.attributes
    leaks = [(s.name, name) for s in traced.spans for name, value in s.attributes.items()
             if QUERY_TOKEN in str(value)]
    assert leaks == []


def test_no_trace_context_is_sent_to_a_client_webhook(traced: Traced) -> None:
    assert traced.hits
    for hit in traced.hits:
        assert not set(PROPAGATION) & set(hit.headers), hit.headers
