"""Every state path of a job, driven through the built-in generator's fault injection, and the
guarded transitions that make duplicated or late tasks harmless."""

from __future__ import annotations

import httpx

from mediagen.broker import QUEUE
from mediagen.jobs import repository as repo
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.worker import celery_app
from tests.support import new_job, sibling, submit, wait_terminal


async def test_pending_processing_completed(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "a quiet lake", width=64, height=64)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed"
    assert (detail["attempts"], detail["retry_count"], detail["error"]) == (1, 0, None)


async def test_retry_then_succeed(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "[fault:transient=1] a lighthouse", width=64, height=64)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    assert detail["retry_count"] == 1
    assert detail["attempts"] == 2
    # The last error is kept for the record even though the job then succeeded.
    assert detail["error"] is None


async def test_retries_exhausted_then_failed(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "[fault:transient=9] a storm", width=64, height=64)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "failed", detail
    assert detail["retry_count"] == 2  # MAX_RETRIES in the test settings
    assert detail["attempts"] == 3
    assert detail["error"].startswith("gave up after 2 retries: injected transient fault")
    assert detail["result_url"] is None


async def test_permanent_error_fails_at_once(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "[fault:permanent] a cat", width=64, height=64)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "failed"
    assert detail["retry_count"] == 0
    assert detail["attempts"] == 1
    assert detail["error"] == "injected permanent fault: the model rejected the input"


async def test_task_delivered_twice_completes_once(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "a twice-told tale", width=64, height=64)
    for _ in range(3):  # the same message again, as a broker redelivery would
        celery_app.send_task("mediagen.jobs.start", args=[job_id], queue=QUEUE)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed"
    assert detail["attempts"] == 1  # only one delivery could claim the job
    first_completion = detail["completed_at"]
    celery_app.send_task("mediagen.jobs.start", args=[job_id], queue=QUEUE)
    celery_app.send_task("mediagen.jobs.poll", args=[job_id, 1], queue=QUEUE)
    await wait_terminal(client, job_id)
    late = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert late["completed_at"] == first_completion
    assert late["attempts"] == 1


async def _job(status: JobStatus, **fields: object) -> Job:
    job: Job = await new_job(status=status, **fields)
    return job


async def test_guarded_transitions_never_move_backwards(database: str) -> None:
    done = await _job(JobStatus.COMPLETED, attempt=1)
    for target in (JobStatus.PROCESSING, JobStatus.RETRYING, JobStatus.FAILED,
                   JobStatus.COMPLETED):
        assert not await repo.transition(done.id, target)
    assert not await repo.claim(done.id, 60, 3600)
    assert (await Job.get(id=done.id)).status is JobStatus.COMPLETED

    failed = await _job(JobStatus.FAILED, attempt=1)
    assert not await repo.complete(failed.id, 1, "k", [], result_ttl=60)
    assert (await Job.get(id=failed.id)).status is JobStatus.FAILED


async def test_claim_is_compare_and_set(database: str) -> None:
    job = await _job(JobStatus.PENDING)
    assert await repo.claim(job.id, 60, 3600)
    assert not await repo.claim(job.id, 60, 3600)  # the second claimant loses
    fresh = await Job.get(id=job.id)
    assert (fresh.status, fresh.attempt) == (JobStatus.PROCESSING, 1)
    # A stale attempt can neither complete nor retry the job.
    assert not await repo.complete(job.id, 0, "k", [], result_ttl=60)
    assert not await repo.schedule_retry(fresh.id, 0, "late", 1)
    assert await repo.complete(job.id, 1, "k", [{"key": "k"}], result_ttl=60)
    assert not await repo.complete(job.id, 1, "k", [{"key": "k"}], result_ttl=60)


async def test_unfinished_counter_matches_the_rows(client: httpx.AsyncClient) -> None:
    """The counter kept by the statements (job_counters) agrees with a COUNT of the rows after
    jobs of one key complete, fail, retry, get canceled and stay pending."""
    from mediagen.jobs.models import JobCounter
    from mediagen.jobs.states import UNFINISHED
    from tests.keys.test_keys import _key_id
    from tests.stack import new_key

    secret = await new_key("counted-states")
    key_id = await _key_id(secret)
    headers = {"Authorization": f"Bearer {secret}"}
    prompts = ["a counted dune", "[fault:transient=1] a counted cliff",
               "[fault:permanent] a counted cave", "[fault:transient=9] a counted gale"]
    ids = []
    for prompt in prompts:
        response = await client.post("/api/v1/generate", headers=headers,
                                     json={"prompt": prompt,
                                           "parameters": {"width": 64, "height": 64}})
        ids.append(response.json()["job_id"])
    waiting = await new_job("a counted queue", owner=key_id)  # pending, never dispatched
    to_cancel = await new_job("a counted cancel", owner=key_id)
    assert (await client.post(f"/api/v1/jobs/{to_cancel.id}/cancel",
                              headers=headers)).status_code == 200
    async with sibling(client, headers=headers) as owner:
        for job_id in ids:
            await wait_terminal(owner, job_id)

    unfinished = await Job.filter(api_key_id=key_id, status__in=list(UNFINISHED)).count()
    shards = await JobCounter.filter(scope=key_id).values_list("unfinished", flat=True)
    assert unfinished == 1 and sum(shards) == 1, (unfinished, shards)

    # By state too (the backlog gauges): one job processing, one retrying, one pending.
    running = await new_job("a counted run", owner=key_id)
    assert await repo.claim(running.id, 60, 3600)
    again = await new_job("a counted retry", owner=key_id)
    assert await repo.claim(again.id, 60, 3600)
    assert await repo.schedule_retry(again.id, 1, "once more", 60)

    async def by_state() -> dict[str, tuple[int, int]]:
        counted = {}
        for state in ("pending", "processing", "retrying"):
            rows = await Job.filter(api_key_id=key_id, status=state).count()
            kept = sum(await JobCounter.filter(scope=key_id).values_list(state, flat=True))
            counted[state] = (rows, kept)
        return counted

    assert await by_state() == {"pending": (1, 1), "processing": (1, 1), "retrying": (1, 1)}
    for job in (running, again):
        await repo.fail(job.id, "done counting")
    await repo.fail(waiting.id, "done counting")
    assert await by_state() == {"pending": (0, 0), "processing": (0, 0), "retrying": (0, 0)}
    shards = await JobCounter.filter(scope=key_id).values_list("unfinished", flat=True)
    assert sum(shards) == 0 and min(shards) == 0
