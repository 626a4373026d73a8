"""Pipeline steps in-process against the real database: retry scheduling, polling with a
countdown instead of waiting, and the sweeper's recovery of stranded jobs."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from mediagen.broker import QUEUE, Outbox, queue_key
from mediagen.config import Settings
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import entry
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.priority import kombu_priority
from mediagen.jobs.states import JobStatus
from mediagen.jobs.sweeper import sweep
from mediagen.providers.builtin.provider import BuiltinProvider
from mediagen.scheduling import enqueue, queue_position
from mediagen.storage.local import LocalStorage
from tests.conftest import REDIS
from tests.support import new_job

# A Redis database no worker consumes: what the steps publish stays there to be read.
QUIET = REDIS.fresh()


@pytest.fixture
def quiet_redis() -> redis.Redis:
    client = redis.Redis.from_url(QUIET)
    client.flushdb()
    return client


def _pipeline(tmp_path: Path, **overrides: object) -> Pipeline:
    settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
    provider = BuiltinProvider(settings.builtin_latency, fault_injection=True)
    return Pipeline(settings, provider, LocalStorage(tmp_path), Outbox(aioredis.from_url(QUIET)))


async def _new_job(prompt: str = "a hill", **fields: object) -> str:
    return str((await new_job(prompt, **fields)).id)


def _published(client: redis.Redis) -> list[tuple[str, list[object]]]:
    """The tasks waiting in the quiet database's queue: (name, args), oldest first (a normal
    job's first start waits in the queue's normal-priority list, after the rest)."""
    tasks = []
    for queue in (QUEUE, queue_key(QUEUE, kombu_priority("normal"))):
        for raw in reversed(client.lrange(queue, 0, -1)):
            message = orjson.loads(raw)
            args = orjson.loads(base64.b64decode(message["body"]))[0]
            tasks.append((message["headers"]["task"], args))
        client.delete(queue)
    return tasks


async def test_transient_error_moves_to_retrying_with_backoff(database: str,
                                                               tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, retry_delay=10, retry_max_delay=600, max_retries=3)
    job_id = await _new_job("[fault:transient=1] a hill")
    step = await pipeline.start(job_id)
    assert step is not None and step.step == "start" and 9 <= step.countdown <= 11
    job = await Job.get(id=job_id)
    assert job.status is JobStatus.RETRYING
    assert job.retry_count == 1
    assert job.error and "transient" in job.error
    assert job.next_attempt_at is not None and job.lease_expires_at is None
    # The retry itself: a new attempt that succeeds.
    assert await pipeline.start(job_id) is None
    job = await Job.get(id=job_id)
    assert (job.status, job.attempt, job.retry_count) == (JobStatus.COMPLETED, 2, 1)


async def test_slow_generation_is_polled_not_waited_for(database: str, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, builtin_latency=30)
    job_id = await _new_job()
    step = await pipeline.start(job_id)
    assert step is not None and step.step == "poll" and step.attempt == 1
    assert 25 < step.countdown <= 30  # come back when it should be ready; hold nothing meanwhile
    job = await Job.get(id=job_id)
    assert job.status is JobStatus.PROCESSING and job.prediction_id
    again = await pipeline.poll(job_id, 1)
    assert again is not None and again.step == "poll"
    assert await pipeline.poll(job_id, 2) is None  # a poll for another attempt is stale


async def test_sweeper_redispatches_stranded_jobs(database: str, tmp_path: Path,
                                                  quiet_redis: redis.Redis) -> None:
    pipeline = _pipeline(tmp_path, dispatch_grace=0, lease_seconds=60, job_timeout=3600)
    past = repo.now() - timedelta(seconds=120)
    never_sent = await _new_job()
    overdue = await _new_job(status=JobStatus.RETRYING, attempt=1, next_attempt_at=past)
    dead_owner = await _new_job(status=JobStatus.PROCESSING, attempt=1, prediction_id="builtin-x-1-0",
                                lease_expires_at=past)
    died_before_create = await _new_job(status=JobStatus.PROCESSING, attempt=1,
                                        lease_expires_at=past)
    healthy = await _new_job(status=JobStatus.PROCESSING, attempt=1, prediction_id="p",
                             lease_expires_at=repo.now() + timedelta(seconds=60))
    await sweep(pipeline)
    steps = _published(quiet_redis)
    assert ("mediagen.jobs.start", [never_sent]) in steps
    assert ("mediagen.jobs.start", [overdue]) in steps
    assert ("mediagen.jobs.poll", [dead_owner, 1]) in steps
    assert ("mediagen.jobs.start", [died_before_create]) in steps
    assert not [s for s in steps if s[1][0] == healthy]
    # A re-dispatched pending job is back in its model's queue (with any other pending job of
    # the session's database the sweep sent again).
    assert await queue_position(pipeline.outbox.client, never_sent) is not None
    # What was re-sent is not re-sent at once by the next sweep.
    await sweep(pipeline)
    again = {args[0] for _, args in _published(quiet_redis)}
    assert not again & {never_sent, overdue, dead_owner}
    # The stranded attempt without a prediction is taken over by a new attempt.
    assert await pipeline.start(died_before_create) is None
    job = await Job.get(id=died_before_create)
    assert (job.status, job.attempt) == (JobStatus.COMPLETED, 2)


async def test_sweeper_fails_jobs_past_deadline(database: str, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, job_timeout=60)
    old = await _new_job()
    await Job.filter(id=old).update(created_at=repo.now() - timedelta(seconds=120))
    await sweep(pipeline)
    job = await Job.get(id=old)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.startswith("deadline exceeded")


async def test_a_stale_queue_entry_does_not_spend_a_start_message(
        database: str, tmp_path: Path, quiet_redis: redis.Redis) -> None:
    """Entries that reached the queue after their jobs were canceled (a submit's news can land
    after the cancel's) sit ahead of a waiting job: its start message skips them and starts it,
    and a canceled job's own message, arriving later, starts nobody in its place."""
    pipeline = _pipeline(tmp_path)
    stale = [await _new_job("canceled meanwhile") for _ in range(3)]
    waiting, later = await _new_job("waiting"), await _new_job("queued later")
    model = pipeline.turns.catalog.for_job("builtin", None).name

    def queue(*job_ids: str) -> None:
        enqueue(pipeline.outbox, [entry(j, model, None, None) for j in job_ids])

    for job_id in stale:
        await pipeline.lifecycle.finish(job_id, JobStatus.CANCELED, "canceled")
    queue(*stale, waiting, later)  # (after the cancels' removals: the race's late side)
    await pipeline.outbox.flush()
    assert await pipeline.start(waiting) is None
    assert (await Job.get(id=waiting)).status is JobStatus.COMPLETED
    for job_id in stale:
        assert await queue_position(pipeline.outbox.client, job_id) is None
        assert await pipeline.start(job_id) is None  # its own message, late
    assert (await Job.get(id=later)).status is JobStatus.PENDING
    assert await queue_position(pipeline.outbox.client, later) == (0, False)
