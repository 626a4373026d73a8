"""Client webhooks end to end, in-process: a worker and two applications of their own
(anonymous, and AUTH_REQUIRED=auto for keys) on a Redis database of their own, delivering over
HTTP to a local receiver on 127.0.0.1 (allowed by WEBHOOK_ALLOW_HOSTS) with retries 0.5 s
apart."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.responses import RedirectResponse, Response

from mediagen.providers.replicate.signatures import verify_webhook
from tests.conftest import REDIS
from tests.receiver import Hit, Receiver, receiving
from tests.stack import InProcess, create_key, in_process, revoke_key
from tests.support import wait_terminal

SECRET = "whsec_" + base64.b64encode(b"client-webhooks-test-secret-32b!").decode()
FAST = {"width": 64, "height": 64}


def _answer(rec: Receiver, hit: Hit) -> Response:
    """/ok/* answers 204; /flaky/* 500 the first time, then 200; /redirect/* 307 to /ok/*;
    /gone/* 410."""
    kind, _, name = hit.path.strip("/").partition("/")
    if kind == "flaky" and len(rec.at(hit.path)) == 1:
        return Response("try later", status_code=500)
    if kind == "gone":
        return Response("no such hook", status_code=410)
    if kind == "redirect":
        return RedirectResponse(f"{rec.url}/ok/{name}-followed", status_code=307)
    return Response(status_code=204 if kind == "ok" else 200)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving(_answer) as rec:
        yield rec


@dataclass
class Stack:
    anonymous: InProcess  # AUTH_REQUIRED=false, WEBHOOK_SECRET set; with its worker
    auto: InProcess  # AUTH_REQUIRED=auto


@pytest.fixture(scope="module")
async def stack(database: str) -> AsyncIterator[Stack]:
    """In-process: the application twice (anonymous, auto) and one worker, on a queue of their
    own; deliveries go over real HTTP to the receiver."""
    env = {"REDIS_URL": REDIS.fresh(), "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "WEBHOOK_RETRY_DELAY": "0.5", "WEBHOOK_SECRET": SECRET}
    async with in_process(env, worker=True) as anonymous, \
            in_process({**env, "AUTH_REQUIRED": "auto"}) as auto:
        yield Stack(anonymous, auto)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.anonymous.client() as http:
        yield http
    assert stack.anonymous.worker is not None
    stack.anonymous.worker.check()


async def _job(client: httpx.AsyncClient, webhook: str, **extra: Any) -> str:
    body = {"prompt": "a pigeon with a letter", "parameters": FAST, "webhook": webhook, **extra}
    response = await client.post("/api/v1/generate", json=body)
    assert response.status_code == 201, response.text
    job_id = str(response.json()["job_id"])
    assert (await wait_terminal(client, job_id))["status"] == "completed"
    return job_id


async def _log(client: httpx.AsyncClient, job_id: str, settled: int,
               timeout: float = 20) -> dict[str, Any]:
    """The delivery log once `settled` deliveries are no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/v1/jobs/{job_id}/webhooks")
        assert response.status_code == 200, response.text
        log: dict[str, Any] = response.json()
        done = [d for d in log["data"] if d["status"] != "pending"]
        if len(done) >= settled:
            return log
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.1)


def _verified(hit: Hit, secret: str = SECRET) -> dict[str, Any]:
    return verify_webhook(hit.headers, hit.body, secret)


async def test_start_and_completed_are_delivered_signed(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    name = uuid.uuid4().hex
    job_id = await _job(client, f"{receiver.url}/ok/{name}")
    log = await _log(client, job_id, 2)
    assert log["url"] == f"{receiver.url}/ok/{name}"
    assert log["events"] == ["start", "progress", "completed"]
    assert {d["event"] for d in log["data"]} >= {"start", "completed"}
    for delivery in log["data"]:
        assert delivery["status"] == "delivered" and delivery["attempts"] == 1
        assert delivery["last_status_code"] == 204 and delivery["delivered_at"]
    payloads = [_verified(hit) for hit in receiver.at(f"/ok/{name}")]
    by_event = {p["event"]: p for p in payloads}
    assert by_event["start"]["job_id"] == job_id and by_event["start"]["status"] == "processing"
    assert by_event["completed"]["status"] == "completed"
    assert by_event["completed"]["result_url"]
    ids = {hit.headers["webhook-id"] for hit in receiver.at(f"/ok/{name}")}
    assert ids == {d["webhook_id"] for d in log["data"]}


async def test_a_failed_attempt_is_retried_with_the_same_id(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    name = uuid.uuid4().hex
    job_id = await _job(client, f"{receiver.url}/flaky/{name}",
                        webhook_events_filter=["completed"])
    log = await _log(client, job_id, 1)
    [delivery] = log["data"]  # the filter: no start, no progress
    assert delivery["event"] == "completed" and delivery["status"] == "delivered"
    assert delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    hits = receiver.at(f"/flaky/{name}")
    assert len(hits) == 2
    assert hits[0].headers["webhook-id"] == hits[1].headers["webhook-id"] == delivery["webhook_id"]
    assert all(_verified(hit)["event"] == "completed" for hit in hits)


async def test_the_events_filter_is_respected(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    name = uuid.uuid4().hex
    job_id = await _job(client, f"{receiver.url}/ok/{name}", webhook_events_filter=["start"])
    log = await _log(client, job_id, 1)
    await asyncio.sleep(1)  # nothing else arrives
    assert [d["event"] for d in log["data"]] == ["start"]
    assert [_verified(hit)["event"] for hit in receiver.at(f"/ok/{name}")] == ["start"]


async def test_redirects_are_not_followed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    name = uuid.uuid4().hex
    job_id = await _job(client, f"{receiver.url}/redirect/{name}",
                        webhook_events_filter=["completed"])
    [delivery] = (await _log(client, job_id, 1))["data"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_status_code"] == 307
    await asyncio.sleep(0.5)
    assert receiver.at(f"/ok/{name}-followed") == []


async def test_a_client_error_fails_at_once(client: httpx.AsyncClient,
                                            receiver: Receiver) -> None:
    name = uuid.uuid4().hex
    job_id = await _job(client, f"{receiver.url}/gone/{name}", webhook_events_filter=["completed"])
    [delivery] = (await _log(client, job_id, 1))["data"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_status_code"] == 410 and delivery["next_attempt_at"] is None
    assert len(receiver.at(f"/gone/{name}")) == 1


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://localhost:1/",
                                 "http://169.254.169.254/latest/meta-data"])
async def test_private_addresses_are_refused_at_submit(client: httpx.AsyncClient,
                                                       url: str) -> None:
    response = await client.post("/api/v1/generate", json={"prompt": "x", "webhook": url})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_webhook"
    assert "non-public" in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {"webhook": "ftp://example.com/"},
    {"webhook": "https://example.com/" + "a" * 2000},
    {"webhook": "https://example.com/", "webhook_events_filter": ["start", "start"]},
    {"webhook": "https://example.com/", "webhook_events_filter": ["finished"]},
    {"webhook": "https://example.com/", "webhook_events_filter": []},
])
async def test_malformed_webhook_fields_are_refused(client: httpx.AsyncClient,
                                                    body: dict[str, Any]) -> None:
    response = await client.post("/api/v1/generate", json={"prompt": "x", **body})
    assert response.status_code == 422, response.text


async def test_anonymous_webhooks_need_a_configured_secret(in_process: InProcess) -> None:
    async with in_process.client() as plain:  # the session's settings: no WEBHOOK_SECRET
        response = await plain.post("/api/v1/generate",
                                    json={"prompt": "x", "webhook": "https://example.com/"})
    assert response.status_code == 422, response.text
    assert "WEBHOOK_SECRET" in response.json()["detail"]


@pytest.fixture(scope="module")
async def keys(stack: Stack) -> AsyncIterator[dict[str, tuple[str, str]]]:
    """Two keys and their webhook secrets; revoked at the end (other modules run anonymously)."""
    made: dict[str, tuple[str, str]] = {}
    for name in ("hook-alice", "hook-bob"):
        key, secret = await create_key(name)
        made[name] = (secret, key.webhook_secret)
    yield made
    for secret, _ in made.values():
        await revoke_key(secret[:11])


async def test_the_log_is_the_owners_only(stack: Stack, receiver: Receiver,
                                          keys: dict[str, tuple[str, str]]) -> None:
    (alice, alice_secret), (bob, _) = keys["hook-alice"], keys["hook-bob"]
    assert alice_secret.startswith("whsec_")
    name = uuid.uuid4().hex
    async with stack.auto.client(headers={"Authorization": f"Bearer {alice}"}) as as_alice:
        job_id = await _job(as_alice, f"{receiver.url}/ok/{name}",
                            webhook_events_filter=["completed"])
        log = await _log(as_alice, job_id, 1)
    assert log["data"][0]["status"] == "delivered"
    [hit] = receiver.at(f"/ok/{name}")
    assert _verified(hit, alice_secret)["job_id"] == job_id  # signed with alice's own secret
    async with stack.auto.client(headers={"Authorization": f"Bearer {bob}"}) as as_bob:
        assert (await as_bob.get(f"/api/v1/jobs/{job_id}/webhooks")).status_code == 404
    async with stack.auto.client() as anonymous:
        assert (await anonymous.get(f"/api/v1/jobs/{job_id}/webhooks")).status_code == 401
