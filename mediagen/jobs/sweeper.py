"""The sweeper: finds jobs the broker dropped or whose owner died, and sends them on again.

Postgres, not Redis, knows which jobs are unfinished. Every SWEEP_INTERVAL this re-dispatches:
pending jobs never dispatched (broker down at submit) or dispatched long ago (message lost);
retrying jobs whose retry is overdue; processing jobs whose lease ran out (worker killed); and it
fails jobs past JOB_TIMEOUT. Re-dispatching twice is harmless: every step is guarded.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from tortoise.expressions import Q

from mediagen.jobs import repository as repo
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Next, Pipeline
from mediagen.jobs.states import JobStatus

log = logging.getLogger(__name__)

BATCH = 500


async def sweep(pipeline: Pipeline) -> list[Next]:
    settings = pipeline.settings
    moment = repo.now()
    grace = timedelta(seconds=settings.dispatch_grace)
    lease = timedelta(seconds=settings.lease_seconds)
    steps: list[Next] = []

    expired = await Job.filter(
        status__in=[JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.RETRYING],
        created_at__lt=moment - timedelta(seconds=settings.job_timeout),
    ).limit(BATCH)
    for job in expired:
        await pipeline._fail_deadline(job)

    # Whatever this sweep re-sends is stamped, so the next sweeps leave it alone a while.
    recent = moment - timedelta(seconds=max(2 * settings.sweep_interval, settings.dispatch_grace))
    not_recently_sent = Q(dispatched_at=None) | Q(dispatched_at__lt=recent)

    pending = (
        await Job.filter(
            Q(dispatched_at=None, created_at__lt=moment - grace)
            | Q(dispatched_at__lt=moment - lease),
            status=JobStatus.PENDING,
        )
        .limit(BATCH)
        .values_list("id", flat=True)
    )
    steps += [Next("start", str(job_id)) for job_id in pending]

    overdue = (
        await Job.filter(
            not_recently_sent, status=JobStatus.RETRYING, next_attempt_at__lt=moment - grace
        )
        .limit(BATCH)
        .values_list("id", flat=True)
    )
    steps += [Next("start", str(job_id)) for job_id in overdue]

    stranded = (
        await Job.filter(
            not_recently_sent, status=JobStatus.PROCESSING, lease_expires_at__lt=moment
        )
        .limit(BATCH)
        .values("id", "attempt", "prediction_id")
    )
    for row in stranded:
        job_id = str(row["id"])
        # With a prediction upstream, look at it again; without one the owner died before
        # creating it, and `start` takes the attempt over (see repository.claim).
        steps.append(
            Next("poll", job_id, row["attempt"]) if row["prediction_id"] else Next("start", job_id)
        )

    if steps:
        await repo.mark_dispatched({s.job_id for s in steps})
    if steps or expired:
        log.info("sweep: %d to re-dispatch, %d past deadline", len(steps), len(expired))
    return steps
