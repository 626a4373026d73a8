"""Batches end to end in-process (the application and its worker's steps in the test's process,
real Postgres and Redis) on a queue of their own, whose jobs take BUILTIN_LATENCY=2 s (long
enough to see them running and to cancel them), batch webhooks delivered over HTTP to a
receiver on 127.0.0.1; and an application with MAX_JOBS_IN_FLIGHT=5 whose queue no worker
consumes, for the in-flight limit."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from mediagen.batches import repository as batches_repo
from mediagen.broker import Task
from mediagen.jobs import repository as jobs_repo
from mediagen.keys.service import SHOWN
from mediagen.providers.replicate.signatures import verify_webhook
from tests.conftest import REDIS, TEST_ENV
from tests.receiver import Hit, Receiver, receiving
from tests.stack import InProcess, app, in_process, new_key
from tests.support import publish

SECRET = "whsec_" + base64.b64encode(b"batch-webhooks-test-secret-32by!").decode()
FAST = {"width": 64, "height": 64}
DATABASE = TEST_ENV["DATABASE_URL"].replace("postgres://", "postgresql://")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """Answers 204 to every POST and remembers it."""
    with receiving() as rec:
        yield rec


@dataclass
class Stack:
    app: InProcess
    broker: str


@pytest.fixture(scope="module")
async def stack(database: str) -> AsyncIterator[Stack]:
    broker = REDIS.fresh()
    env = {"REDIS_URL": broker, "BUILTIN_LATENCY": "2", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "WEBHOOK_RETRY_DELAY": "0.5", "WEBHOOK_SECRET": SECRET}
    async with in_process(env, worker=True) as app:
        yield Stack(app, broker)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.app.client(timeout=60) as http:
        yield http
    assert stack.app.worker is not None
    stack.app.worker.check()


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(DATABASE)
    yield connection
    await connection.close()


def _entries(n: int, tag: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"{tag} #{i}", "parameters": FAST, **extra} for i in range(n)]


async def _finished(client: httpx.AsyncClient, batch_id: str, timeout: float = 60,
                    **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/v1/batches/{batch_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


def _verified(hit: Hit) -> dict[str, Any]:
    return verify_webhook(hit.headers, hit.body, SECRET)


async def _hits(receiver: Receiver, path: str, count: int, timeout: float = 30) -> list[Hit]:
    deadline = time.monotonic() + timeout
    while len(receiver.at(path)) < count:
        assert time.monotonic() < deadline, receiver.at(path)
        await asyncio.sleep(0.1)
    return receiver.at(path)


async def test_a_batch_of_50_is_accepted_at_once_and_completes(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    tag = uuid.uuid4().hex
    response = await client.post("/api/v1/batches", json={"jobs": _entries(50, tag)})
    assert response.status_code == 201, response.text
    created = response.json()
    batch_id = created["id"]
    assert created["status"] == "running" and created["size"] == 50
    assert created["counts"]["pending"] == 50 and sum(created["counts"].values()) == 50
    assert len(set(created["job_ids"])) == 50 and created["completed_at"] is None

    # Every job row names the batch and keeps its place in it.
    rows = await db.fetch("SELECT id, prompt, batch_id, batch_index FROM jobs "
                          "WHERE batch_id = $1 ORDER BY batch_index", uuid.UUID(batch_id))
    assert [str(row["id"]) for row in rows] == created["job_ids"]
    assert [row["batch_index"] for row in rows] == list(range(50))
    assert [row["prompt"] for row in rows] == [f"{tag} #{i}" for i in range(50)]

    # While the jobs run (2 s each): running, every job counted once, none finished yet.
    running = (await client.get(f"/api/v1/batches/{batch_id}")).json()
    assert running["status"] == "running" and running["completed_at"] is None
    assert sum(running["counts"].values()) == 50
    assert running["counts"]["pending"] + running["counts"]["processing"] == 50
    assert running["job_ids"] == created["job_ids"]

    done = await _finished(client, batch_id)
    assert done["status"] == "completed"
    assert done["counts"] == {"pending": 0, "processing": 0, "retrying": 0, "completed": 50,
                              "failed": 0, "canceled": 0, "expired": 0}
    assert done["job_ids"] == created["job_ids"] and done["completed_at"] is not None
    job = (await client.get(f"/api/v1/jobs/{created['job_ids'][7]}")).json()
    assert job["status"] == "completed" and job["batch_id"] == batch_id
    # The settle task marked it, with the last job's end as its completion.
    marked = await _marked(db, batch_id)
    last = await db.fetchval("SELECT max(completed_at) FROM jobs WHERE batch_id = $1",
                             uuid.UUID(batch_id))
    assert marked == last


async def _marked(db: asyncpg.Connection, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        marked = await db.fetchval("SELECT completed_at FROM batches WHERE id = $1",
                                   uuid.UUID(batch_id))
        if marked is not None:
            return marked
        assert time.monotonic() < deadline, "the batch was never marked completed"
        await asyncio.sleep(0.1)


async def test_one_invalid_entry_refuses_the_whole_batch(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    secret = await new_key("batch-invalid")
    auth = {"Authorization": f"Bearer {secret}"}
    tag = uuid.uuid4().hex
    entries = _entries(4, tag)

    blank = [*entries[:2], {"prompt": "   ", "parameters": FAST}, entries[3]]
    refused = await client.post("/api/v1/batches", json={"jobs": blank}, headers=auth)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["body", "jobs", 2, "prompt"]

    unknown = [*entries[:3], {"prompt": "x", "model": "nobody/no-such-model"}]
    refused = await client.post("/api/v1/batches", json={"jobs": unknown}, headers=auth)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("jobs[3]: ")

    too_urgent = [entries[0], {"prompt": "x", "priority": "high"}]  # ceiling: normal
    refused = await client.post("/api/v1/batches", json={"jobs": too_urgent}, headers=auth)
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"].startswith("jobs[1]: ")

    private = [{"prompt": "x", "webhook": "http://10.1.2.3/hook"}, entries[1]]
    refused = await client.post("/api/v1/batches", json={"jobs": private}, headers=auth)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("jobs[0]: ")

    over = await client.post("/api/v1/batches", json={"jobs": _entries(101, tag)}, headers=auth)
    assert over.status_code == 422, over.text  # MAX_BATCH (100)
    empty = await client.post("/api/v1/batches", json={"jobs": []}, headers=auth)
    assert empty.status_code == 422, empty.text

    key_id = await db.fetchval("SELECT id FROM api_keys WHERE prefix = $1", secret[:SHOWN])
    assert key_id is not None
    assert await db.fetchval("SELECT count(*) FROM batches WHERE api_key_id = $1", key_id) == 0
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE prompt LIKE $1", f"{tag}%") == 0
    assert await db.fetchval("SELECT coalesce(sum(unfinished), 0) FROM job_counters "
                             "WHERE scope = $1", key_id) == 0


async def test_a_body_over_max_body_bytes_is_accepted_for_a_batch(
    client: httpx.AsyncClient,
) -> None:
    """From a caller with a key (a keyless one is refused unread: tests/security/test_bodies)."""
    tag = uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {await new_key('large-batch')}"}
    jobs = [{"prompt": f"{tag} {'x' * 1900}", "parameters": FAST} for _ in range(40)]
    single = await client.post("/api/v1/generate", json={**jobs[0], "prompt": "y" * 70_000},
                               headers=auth)
    assert single.status_code == 413  # over MAX_BODY_BYTES (64 KiB)
    response = await client.post("/api/v1/batches", json={"jobs": jobs}, headers=auth)
    assert len(response.request.content) > 65_536
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 40


async def test_the_batch_must_fit_within_the_in_flight_limit(
    database: str, db: asyncpg.Connection
) -> None:
    secret = await new_key("batch-in-flight")
    body = {"jobs": _entries(3, uuid.uuid4().hex)}
    async with app({"MAX_JOBS_IN_FLIGHT": "5"}, timeout=30,
                   headers={"Authorization": f"Bearer {secret}"}) as client:
        six = await client.post("/api/v1/batches", json={"jobs": _entries(6, "six")})
        first = await client.post("/api/v1/batches", json=body)
        second = await client.post("/api/v1/batches", json=body)  # 3 + 3 > 5
        two = await client.post("/api/v1/batches", json={"jobs": _entries(2, "two")})
        single = await client.post("/api/v1/generate", json={"prompt": "one more"})
    assert six.status_code == 429, six.text
    assert six.headers["retry-after"] == "5" and "nothing was created" in six.json()["detail"]
    assert first.status_code == 201, first.text
    assert second.status_code == 429, second.text
    assert two.status_code == 201, two.text
    assert single.status_code == 429, single.text
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE prefix = $1", secret[:SHOWN])
    assert await db.fetchval("SELECT count(*) FROM batches WHERE api_key_id = $1", key_id) == 2
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE api_key_id = $1", key_id) == 5
    assert await db.fetchval("SELECT sum(unfinished) FROM job_counters WHERE scope = $1",
                             key_id) == 5


async def test_cancel_stops_every_unfinished_job(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # The first fails at once; the other three take 2 s each.
    jobs = [{"prompt": "[fault:permanent] broken", "parameters": FAST}, *_entries(3, "slow")]
    created = (await client.post("/api/v1/batches", json={"jobs": jobs})).json()
    batch_id = created["id"]
    deadline = time.monotonic() + 10
    while (await client.get(f"/api/v1/batches/{batch_id}")).json()["counts"]["failed"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    response = await client.post(f"/api/v1/batches/{batch_id}/cancel")
    assert response.status_code == 200, response.text
    canceled = response.json()
    assert canceled["status"] == "canceled" and canceled["canceled_at"] is not None
    assert canceled["counts"]["failed"] == 1 and canceled["counts"]["canceled"] == 3
    assert canceled["completed_at"] is not None
    statuses = await db.fetch("SELECT status, error FROM jobs WHERE batch_id = $1 "
                              "ORDER BY batch_index", uuid.UUID(batch_id))
    assert [row["status"] for row in statuses] == ["failed", "canceled", "canceled", "canceled"]
    assert statuses[1]["error"] == "canceled by the client"
    job = (await client.get(f"/api/v1/status/{created['job_ids'][2]}")).json()
    assert job["status"] == "canceled"

    await asyncio.sleep(2.5)  # past the jobs' latency: nothing comes back to life
    again = await client.post(f"/api/v1/batches/{batch_id}/cancel")
    assert again.status_code == 200 and again.json()["counts"] == canceled["counts"]
    assert again.json()["canceled_at"] == canceled["canceled_at"]
    assert await _marked(db, batch_id) is not None

    finished = (await client.post("/api/v1/batches", json={"jobs": [
        {"prompt": "[fault:permanent] quick", "parameters": FAST}]})).json()
    await _finished(client, finished["id"])
    late = await client.post(f"/api/v1/batches/{finished['id']}/cancel")
    assert late.status_code == 409, late.text


async def test_only_the_owner_sees_and_cancels_a_batch(client: httpx.AsyncClient) -> None:
    owner = {"Authorization": f"Bearer {await new_key('batch-owner')}"}
    other = {"Authorization": f"Bearer {await new_key('batch-other')}"}
    created = await client.post("/api/v1/batches", json={"jobs": _entries(2, "mine")},
                                headers=owner)
    assert created.status_code == 201, created.text
    batch_id = created.json()["id"]
    assert (await client.get(f"/api/v1/batches/{batch_id}", headers=owner)).status_code == 200
    assert (await client.get(f"/api/v1/batches/{batch_id}", headers=other)).status_code == 404
    assert (await client.get(f"/api/v1/batches/{batch_id}")).status_code == 404  # anonymous
    assert (await client.post(f"/api/v1/batches/{batch_id}/cancel",
                              headers=other)).status_code == 404
    assert (await client.get(f"/api/v1/batches/{uuid.uuid4()}", headers=owner)).status_code == 404
    done = await _finished(client, batch_id, **owner)
    assert done["status"] == "completed" and done["counts"]["completed"] == 2


async def test_the_batch_webhook_is_sent_once_signed(
    client: httpx.AsyncClient, receiver: Receiver, db: asyncpg.Connection
) -> None:
    name = uuid.uuid4().hex
    # Twenty jobs that finish at about the same moment: each asks whether the batch finished.
    body = {"jobs": _entries(20, name), "webhook": f"{receiver.url}/{name}"}
    created = (await client.post("/api/v1/batches", json=body)).json()
    done = await _finished(client, created["id"])
    [hit] = await _hits(receiver, f"/{name}", 1)
    await asyncio.sleep(1.5)  # nothing else arrives
    assert len(receiver.at(f"/{name}")) == 1
    payload = _verified(hit)
    assert payload["event"] == "batch.completed" and payload["id"] == created["id"]
    assert payload["status"] == "completed" and payload["size"] == 20
    assert payload["counts"] == done["counts"] and payload["job_ids"] == created["job_ids"]
    assert payload["webhook"] == body["webhook"] and payload["completed_at"]
    rows = await db.fetch("SELECT job_id, event, status, attempts FROM webhook_deliveries "
                          "WHERE batch_id = $1", uuid.UUID(created["id"]))
    assert len(rows) == 1 and rows[0]["job_id"] is None
    assert rows[0]["event"] == "batch.completed" and rows[0]["status"] == "delivered"
    assert hit.headers["webhook-id"].startswith("msg_")


async def test_a_canceled_batch_reports_canceled_by_webhook(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    name = uuid.uuid4().hex
    body = {"jobs": _entries(3, name), "webhook": f"{receiver.url}/{name}"}
    created = (await client.post("/api/v1/batches", json=body)).json()
    assert (await client.post(f"/api/v1/batches/{created['id']}/cancel")).status_code == 200
    [hit] = await _hits(receiver, f"/{name}", 1)
    payload = _verified(hit)
    assert payload["status"] == "canceled" and payload["counts"]["canceled"] == 3
    assert payload["canceled_at"]


async def test_a_finished_batch_whose_settle_was_lost_is_marked_by_the_sweeper(
    stack: Stack, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """Its jobs finished, but no process asked whether the batch did (it died after the
    commits): the sweep marks it, writes its webhook once, and the webhook is delivered."""
    name = uuid.uuid4().hex
    batch_id = uuid.uuid4()
    jobs = [batches_repo.NewJob(id=uuid.uuid4(), prompt=f"{name} {i}", parameters=FAST,
                                model=None, provider="builtin", priority="normal")
            for i in range(3)]
    created = await batches_repo.insert(batch_id, jobs, owner=None, max_in_flight=0,
                                        webhook=f"{receiver.url}/{name}")
    assert created is not None
    for job in jobs:  # finished without announcing: nobody sends the batch's settle
        assert await jobs_repo.fail(job.id, "failed for the test") is not None
    assert await db.fetchval("SELECT completed_at FROM batches WHERE id = $1", batch_id) is None

    assert await publish(stack.broker, Task("mediagen.jobs.sweep", ()))
    [hit] = await _hits(receiver, f"/{name}", 1)
    payload = _verified(hit)
    assert payload["id"] == str(batch_id) and payload["counts"]["failed"] == 3
    assert payload["job_ids"] == [str(job.id) for job in jobs]
    # Settling again finds nothing to do: one mark, one delivery.
    assert await batches_repo.settle(batch_id) == (False, [])
    assert await publish(stack.broker, Task("mediagen.jobs.sweep", ()))
    await asyncio.sleep(1.5)
    assert len(receiver.at(f"/{name}")) == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE batch_id = $1",
                             batch_id) == 1


async def test_idempotency_key_replays_the_batch_and_creates_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    secret = await new_key("batch-idempotent")
    auth = {"Authorization": f"Bearer {secret}"}
    key = f"batch-{uuid.uuid4().hex}"
    body = {"jobs": _entries(3, uuid.uuid4().hex)}
    first = await client.post("/api/v1/batches", json=body,
                              headers={**auth, "Idempotency-Key": key})
    again = await client.post("/api/v1/batches", json=body,
                              headers={**auth, "Idempotency-Key": key})
    assert first.status_code == again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = await client.post("/api/v1/batches", json={"jobs": _entries(1, "other")},
                              headers={**auth, "Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_mismatch"
    # The same key on /generate is another endpoint's: a job of its own, never the batch.
    single = await client.post("/api/v1/generate", json={"prompt": "alone", "parameters": FAST},
                               headers={**auth, "Idempotency-Key": key})
    assert single.status_code == 201 and "job_id" in single.json()
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE prefix = $1", secret[:SHOWN])
    assert await db.fetchval("SELECT count(*) FROM batches WHERE api_key_id = $1", key_id) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE api_key_id = $1", key_id) == 4


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
       "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


async def test_entries_input_files_are_checked_and_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    tag = uuid.uuid4().hex
    unknown = f"mediagen://files/{uuid.uuid4()}"
    missing = {"prompt": f"{tag} missing", "parameters": {**FAST, "image": unknown}}
    stored = {"prompt": f"{tag} stored", "parameters": {**FAST, f"file_{tag}": PNG}}
    refused = await client.post("/api/v1/batches", json={"jobs": [stored, missing]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("jobs[1]: parameter 'image'")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE prompt LIKE $1", f"{tag}%") == 0
    # The first entry's data: input had been stored: the refused batch keeps nothing.
    assert await db.fetchval("SELECT count(*) FROM files WHERE filename = $1", f"file_{tag}") == 0

    inline = {"prompt": f"{tag} inline", "parameters": {**FAST, "image": PNG}}
    created = await client.post("/api/v1/batches", json={"jobs": [*_entries(1, tag), inline]})
    assert created.status_code == 201, created.text
    plain, with_file = created.json()["job_ids"]
    row = await db.fetchrow("SELECT parameters, input_files FROM jobs WHERE id = $1",
                            uuid.UUID(with_file))
    [file_id] = json.loads(row["input_files"])
    assert json.loads(row["parameters"])["image"] == f"mediagen://files/{file_id}"
    assert await db.fetchval("SELECT input_files FROM jobs WHERE id = $1",
                             uuid.UUID(plain)) is None
    done = await _finished(client, created.json()["id"])
    assert done["counts"]["completed"] == 2, done
