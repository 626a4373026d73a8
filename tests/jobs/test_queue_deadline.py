"""A deadline on waiting: a job still pending at its queue deadline (`max_queue_seconds`: the
job's own, else its key's default, else its model's, else MAX_QUEUE_SECONDS) fails with
`error_code` `queue_timeout`, announced as any failure (its event, its webhook, its batch) and
freeing its in-flight place; found by the sweeper, or refused by the start step, whichever
comes first.

The application runs in this process on a queue of its own that no worker consumes, so its jobs
stay pending for as long as a test likes. The test plays the worker with the worker's own parts
(`mediagen.worker_services.Worker`): it sweeps, starts a job when it means to, and runs every other task
message the application and the sweep published (webhook deliveries, batch settles), over
real Postgres, Redis and HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from mediagen.broker import PRIORITY_STEPS, QUEUES, queue_key, stream_key
from mediagen.catalog import CatalogError
from mediagen.catalog.catalog import parse
from mediagen.config import MAX_QUEUE_SECONDS_LIMIT, Settings
from mediagen.db import pool
from mediagen.jobs.dispatch import START
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.keys import service as keys
from mediagen.keys.cli import _queue_seconds as queue_seconds
from mediagen.keys.models import ApiKey
from mediagen.notify import DELIVER_TASK
from mediagen.scheduling import pool_of, queue_position
from mediagen.scheduling.queues import HELD
from mediagen.worker_services import Worker
from tests.conftest import ROOT
from tests.receiver import Receiver, receiving
from tests.stack import InProcess, _decode, in_process
from tests.support import free_port

SMALL = {"width": 64, "height": 64}
GLOBAL_DEFAULT = 3600  # MAX_QUEUE_SECONDS of this module's application
MODELS = """
[models."mediagen/builtin"]
provider = "builtin"
default = true

[models."acme/patient"]
provider = "builtin"
max_queue_seconds = 600

[models."acme/hasty"]
provider = "builtin"
max_queue_seconds = 1

[models."acme/gpu"]
provider = "cog"
[[models."acme/gpu".endpoints]]
url = "http://127.0.0.1:{port}"
slots = 1
"""


@dataclass
class Deadlines:
    app: InProcess
    worker: Worker
    redis: aioredis.Redis
    receiver: Receiver

    async def as_key(self, max_queue_seconds: int | None = None) -> httpx.AsyncClient:
        """A client with a key of its own (so its in-flight count is its own)."""
        key, secret = await keys.create_key(f"deadline-{uuid.uuid4().hex[:8]}")
        if max_queue_seconds is not None:
            await keys.set_max_queue_seconds(str(key.id), max_queue_seconds)
        return self.app.client(headers={"Authorization": f"Bearer {secret}"})

    async def run_messages(self) -> list[str]:
        """Run the task messages waiting in the queue, as a worker would, except starts (no
        worker is free to start a job); the names of those run."""
        ran = []
        for key in (queue_key(queue, step) for queue in QUEUES for step in PRIORITY_STEPS):
            while (raw := await self.redis.rpop(key)) is not None:
                name, args, _ = _decode(raw)
                if name != START:
                    await self.worker.tasks()[name](*args)
                    ran.append(name)
        await self.worker.outbox.flush()
        return ran

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """The `status` events of the job's stream, in order."""
        entries = await self.redis.xrange(stream_key(job_id))
        return [orjson.loads(fields[b"data"]) for _, fields in entries
                if fields.get(b"event") == b"status"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


@pytest.fixture(scope="module")
async def stack(database: str, receiver: Receiver,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deadlines]:
    models = tmp_path_factory.mktemp("deadline") / "models.toml"
    models.write_text(MODELS.format(port=free_port()))  # (no Cog server answers there)
    env = {"MODELS_FILE": str(models), "MAX_QUEUE_SECONDS": str(GLOBAL_DEFAULT),
           "MAX_JOBS_IN_FLIGHT": "2", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "KEY_CACHE_SECONDS": "0",
           # Other modules' jobs share the session's database, and a start message starts
           # whoever's turn it is: a long dispatch grace and lease keep this module's sweeps
           # from queueing the pending jobs they left behind ahead of this module's own.
           "DISPATCH_GRACE": "3600", "LEASE_SECONDS": "3600"}
    async with in_process(env) as app:
        worker = await Worker.open(app.settings)
        client = aioredis.from_url(app.settings.redis_url.get_secret_value())
        try:
            yield Deadlines(app, worker, client, receiver)
        finally:
            await client.aclose()
            await worker.close(database=False)


@pytest.fixture(autouse=True)
async def _leave_no_job_queued(stack: Deadlines) -> AsyncIterator[None]:
    """A start message starts whoever's turn it is: jobs a test leaves waiting are canceled,
    so the next test's starts start its own jobs."""
    yield
    left = await Job.filter(status__in=(JobStatus.PENDING, JobStatus.RETRYING),
                            api_key__name__startswith="deadline-").values_list("id", flat=True)
    for job_id in left:
        await stack.worker.pipeline.lifecycle.finish(job_id, JobStatus.CANCELED, "test over")
    await stack.worker.outbox.flush()


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/api/v1/generate", json={
        "prompt": "a patient heron", "parameters": SMALL, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def detail(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def waits(job: dict[str, Any]) -> float | None:
    """The job's max_queue_seconds, as its detail tells it (None: no queue deadline)."""
    if job["queue_deadline"] is None:
        return None
    given = datetime.fromisoformat(job["queue_deadline"]) - datetime.fromisoformat(
        job["created_at"])
    return round(given.total_seconds(), 3)


async def past(*job_ids: str) -> None:
    """Wait until the jobs' queue deadlines have passed (by Postgres' clock)."""
    db = await pool()
    while await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) "
                            "AND queue_deadline > now()", [uuid.UUID(j) for j in job_ids]):
        await asyncio.sleep(0.05)


def timed_out(job: dict[str, Any]) -> bool:
    return (job["status"] == "failed" and job["error_code"] == "queue_timeout"
            and job["started_at"] is None and job["attempts"] == 0)


async def test_a_job_that_cannot_start_times_out_with_its_event_and_webhook(
        stack: Deadlines) -> None:
    """Nothing starts it: the sweep fails it, its event and webhook say so, its place in the
    key's in-flight jobs (MAX_JOBS_IN_FLIGHT=2) and in the queue is free again."""
    hook = f"{stack.receiver.url}/timeout/{uuid.uuid4().hex}"
    async with await stack.as_key() as client:
        late = await submit(client, max_queue_seconds=1, webhook=hook)
        patient = await submit(client)
        refused = await client.post("/api/v1/generate",
                                    json={"prompt": "one too many", "parameters": SMALL})
        assert refused.status_code == 429, refused.text  # two in flight: full
        assert await queue_position(stack.redis, late) is not None
        await stack.worker.sweep()  # not due yet: nothing happens
        assert (await detail(client, late))["status"] == "pending"
        await past(late)
        await stack.worker.sweep()
        job = await detail(client, late)
        assert timed_out(job), job
        assert job["error"] == "not started within max_queue_seconds=1s"
        assert job["queue_position"] is None
        assert (await detail(client, patient))["status"] == "pending"  # no deadline due
        # Its place is free: the key may submit again, and the queue no longer holds it.
        await submit(client, prompt="now there is room")
        assert await queue_position(stack.redis, late) is None
        # The event, then the webhook, which the worker delivers.
        events = await stack.events(late)
        assert [e["status"] for e in events] == ["pending", "failed"]
        assert events[-1]["error_code"] == "queue_timeout"
        assert DELIVER_TASK in await stack.run_messages()
        deadline = time.monotonic() + 20
        while not stack.receiver.at(hook.removeprefix(stack.receiver.url)):
            assert time.monotonic() < deadline, "no webhook"
            await asyncio.sleep(0.05)
        [hit] = stack.receiver.at(hook.removeprefix(stack.receiver.url))
        body = orjson.loads(hit.body)
        assert body["event"] == "completed" and body["status"] == "failed"
        assert body["error_code"] == "queue_timeout"


async def test_a_batch_whose_jobs_time_out_is_settled(stack: Deadlines) -> None:
    async with await stack.as_key() as client:
        response = await client.post("/api/v1/batches", json={"jobs": [
            {"prompt": "first", "parameters": SMALL, "max_queue_seconds": 1},
            {"prompt": "second", "parameters": SMALL, "model": "acme/hasty"}]})
        assert response.status_code == 201, response.text
        batch = response.json()
        await past(*map(str, batch["job_ids"]))
        await stack.worker.sweep()
        await stack.run_messages()
        settled = (await client.get(f"/api/v1/batches/{batch['id']}")).json()
        assert settled["status"] == "completed", settled
        assert settled["counts"]["failed"] == 2
        for job_id in batch["job_ids"]:
            assert timed_out(await detail(client, str(job_id)))


async def test_a_cog_job_waiting_for_a_slot_times_out_and_leaves_the_queue(
        stack: Deadlines) -> None:
    """A Cog model whose one slot another job holds: the job waits in the model's queue, and
    its timeout takes it out of the queue (the slot's next job is not held behind it)."""
    [endpoint] = stack.app.app.state.catalog.route("acme/gpu").endpoints
    held = HELD + pool_of(endpoint)
    await stack.redis.zadd(held, {"another-job": (time.time() + 600) * 1000})
    try:
        async with await stack.as_key() as client:
            job = await submit(client, model="acme/gpu", parameters={}, max_queue_seconds=1)
            await stack.worker.start(job)  # no free slot: it waits, pending, in the queue
            assert (await detail(client, job))["status"] == "pending"
            assert await queue_position(stack.redis, job) == (0, False)
            await past(job)
            await stack.worker.sweep()
            assert timed_out(await detail(client, job))
            assert await queue_position(stack.redis, job) is None
            assert await stack.redis.zscore(held, "another-job") is not None
    finally:
        await stack.redis.delete(held)


async def test_the_start_step_refuses_a_job_whose_deadline_passed(stack: Deadlines) -> None:
    """The start message waited past the deadline: the start fails the job instead of running
    it; started at the same moment as the sweep, one of them fails it, once."""
    async with await stack.as_key() as client:
        alone = await submit(client, max_queue_seconds=1)
        raced = await submit(client, max_queue_seconds=1)
        await past(alone, raced)
        await stack.worker.start(alone)
        assert timed_out(await detail(client, alone))
        await asyncio.gather(stack.worker.start(raced), stack.worker.sweep(),
                             stack.worker.start(raced))
        assert timed_out(await detail(client, raced))
        assert [e["status"] for e in await stack.events(raced)] == ["pending", "failed"]
        db = await pool()
        assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE job_id = $1",
                                 uuid.UUID(raced)) == 0  # (no webhook asked for)
        counted = await db.fetchval(
            "SELECT sum(unfinished) FROM job_counters WHERE scope = (SELECT api_key_id "
            "FROM jobs WHERE id = $1)", uuid.UUID(raced))
        assert counted == 0


async def test_a_job_that_starts_in_time_is_unaffected(stack: Deadlines) -> None:
    async with await stack.as_key() as client:
        quick = await submit(client, max_queue_seconds=1)
        await stack.worker.start(quick)
        await past(quick)
        await stack.worker.sweep()
        job = await detail(client, quick)
        assert job["status"] == "completed" and job["error_code"] is None, job
        assert [e["status"] for e in await stack.events(quick)] == [
            "pending", "processing", "completed"]
        # Started, then back to waiting (a retry): no longer pending, so no queue timeout.
        retried = await submit(client, prompt="[fault:transient=1] a heron", max_queue_seconds=1)
        await stack.worker.start(retried)
        assert (await detail(client, retried))["status"] == "retrying"
        await past(retried)
        await stack.worker.sweep()
        assert (await detail(client, retried))["status"] == "retrying"
        await stack.worker.start(retried)
        assert (await detail(client, retried))["status"] == "completed"


async def test_the_job_wins_then_the_key_then_the_model_then_the_setting(
        stack: Deadlines) -> None:
    async with await stack.as_key() as plain, await stack.as_key(300) as keyed:
        assert waits(await detail(plain, await submit(plain))) == GLOBAL_DEFAULT
        assert waits(await detail(plain, await submit(plain, model="acme/patient"))) == 600
        assert waits(await detail(keyed, await submit(keyed, model="acme/patient"))) == 300
        assert waits(await detail(keyed, await submit(keyed))) == 300
    async with await stack.as_key(300) as keyed:
        mine = await submit(keyed, model="acme/patient", max_queue_seconds=45)
        assert waits(await detail(keyed, mine)) == 45
        assert waits(await detail(keyed, await submit(keyed, model="acme/hasty"))) == 300
    # `/v1` predictions have no field of their own: the key's default, else the model's.
    async with await stack.as_key() as plain, await stack.as_key(300) as keyed:
        for client, expected in ((plain, 600), (keyed, 300)):
            created = await client.post("/v1/predictions", json={
                "version": "acme/patient", "input": {"prompt": "p", **SMALL}})
            assert created.status_code == 201, created.text
            assert waits(await detail(client, created.json()["id"])) == expected


async def test_the_key_default_and_the_model_default_each_time_out(stack: Deadlines) -> None:
    async with await stack.as_key(1) as keyed, await stack.as_key() as plain:
        by_key = await submit(keyed)
        by_model = await submit(plain, model="acme/hasty")
        await past(by_key, by_model)
        await stack.worker.sweep()
        assert timed_out(await detail(keyed, by_key))
        assert timed_out(await detail(plain, by_model))


@pytest.mark.parametrize("value", [0, -1, MAX_QUEUE_SECONDS_LIMIT + 1, "soon", 1.5, [5]])
async def test_bad_values_are_refused(stack: Deadlines, value: Any) -> None:
    async with await stack.as_key() as client:
        single = await client.post("/api/v1/generate", json={
            "prompt": "p", "max_queue_seconds": value})
        assert single.status_code == 422, single.text
        assert single.json()["code"] == "validation_error"
        assert single.json()["errors"][0]["loc"] == ["body", "max_queue_seconds"]
        assert "max_queue_seconds" in single.json()["detail"]
        batch = await client.post("/api/v1/batches", json={"jobs": [
            {"prompt": "fine"}, {"prompt": "p", "max_queue_seconds": value}]})
        assert batch.status_code == 422, batch.text
        assert batch.json()["errors"][0]["loc"] == ["body", "jobs", 1, "max_queue_seconds"]


def test_bad_defaults_are_refused(tmp_path: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for bad in (0, -3, MAX_QUEUE_SECONDS_LIMIT + 1, "ten"):
        data = {"models": {"acme/x": {"provider": "builtin", "max_queue_seconds": bad}}}
        with pytest.raises(CatalogError, match=r'models."acme/x".max_queue_seconds'):
            parse(tmp_path / "models.toml", data, settings)
    for bad in (-1, MAX_QUEUE_SECONDS_LIMIT + 1):
        with pytest.raises(ValidationError, match="max_queue_seconds"):
            Settings(_env_file=None, max_queue_seconds=bad)  # type: ignore[call-arg]


def mediagen_keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mediagen", "keys", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_keys_set_max_queue(database: str) -> None:
    key, _ = await keys.create_key(f"deadline-cli-{uuid.uuid4().hex[:8]}")
    done = mediagen_keys("set-max-queue", key.prefix, "120")
    assert done.returncode == 0, done.stderr
    assert "may wait to start 120s" in done.stdout
    assert (await ApiKey.get(id=key.id)).max_queue_seconds == 120
    listed = mediagen_keys("list")
    assert any(str(key.id) in line and "max-queue=120s" in line
               for line in listed.stdout.splitlines())
    assert mediagen_keys("set-max-queue", str(key.id), "default").returncode == 0
    assert (await ApiKey.get(id=key.id)).max_queue_seconds is None
    refused = mediagen_keys("set-max-queue", key.prefix, "0")
    assert refused.returncode == 2 and "neither seconds" in refused.stderr, refused
    assert (await ApiKey.get(id=key.id)).max_queue_seconds is None
    for bad in ("-5", "ten", "1.5", "", str(MAX_QUEUE_SECONDS_LIMIT + 1)):
        with pytest.raises(ValueError, match="neither seconds"):
            queue_seconds(bad)
    assert queue_seconds(str(MAX_QUEUE_SECONDS_LIMIT)) == MAX_QUEUE_SECONDS_LIMIT


async def test_the_sweep_reads_only_the_overdue_jobs(database: str) -> None:
    """Its query is one range of the partial index of pending jobs with a deadline."""
    from mediagen.jobs.repository import _QUEUE_TIMED_OUT

    async with (await pool()).acquire() as db, db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in await db.fetch(
            f"EXPLAIN {_QUEUE_TIMED_OUT}", 500))
    assert "jobs_queue_deadline_idx" in plan, plan
