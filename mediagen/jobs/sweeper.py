"""The sweeper: finds jobs the broker dropped or whose owner died, and sends them on again.

Postgres, not Redis, knows which jobs are unfinished. Every SWEEP_INTERVAL this re-dispatches:
pending jobs never dispatched (broker down at submit) or dispatched long ago (message lost);
retrying jobs whose retry is overdue; processing jobs whose lease ran out (worker killed); and it
fails jobs past JOB_TIMEOUT, and pending jobs past their queue deadline (`queue_timeout`, found
through a partial index, so a sweep pays for the overdue ones only); and it sends again the
upstream cancels that failed or were lost (`upstream_cancels`), and marks the finished batches
whose settle was lost (`mediagen.batches`). Re-dispatching twice is harmless: every step is
guarded. It also drops from the head of every queue the jobs that are no longer waiting (a
crash between a commit and its announcement), so queue positions stay true, and sends the
starts that fit in the free slots of every model with a limit (`mediagen.jobs.turns`).

Where a provider keeps capacity of its own (Cog), its sweep runs too: health checks of its
servers (`mediagen.providers.cog.capacity`).

It also runs retention (`mediagen.jobs.retention`): the outputs of jobs past their retention
are deleted, and, on its own schedule, old rows are pruned.

Each query takes at most BATCH rows, so a sweep's work is bounded whatever the backlog.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from tortoise.expressions import Q

from mediagen.batches import repository as batches
from mediagen.jobs import repository as repo
from mediagen.jobs import retention, upstream_cancels
from mediagen.jobs.dispatch import Next, cancel_upstream_task, entry, redispatch
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.states import UNFINISHED, JobStatus
from mediagen.notify import delivery_task
from mediagen.observability import metrics

log = logging.getLogger(__name__)

BATCH = 500


async def sweep(pipeline: Pipeline) -> int:
    """One sweep; publishes what it re-dispatches and returns how many jobs that was."""
    settings = pipeline.settings
    outbox = pipeline.outbox
    moment = repo.now()
    grace = timedelta(seconds=settings.dispatch_grace)
    lease = timedelta(seconds=settings.lease_seconds)

    expired = await Job.filter(
        status__in=UNFINISHED, created_at__lt=moment - timedelta(seconds=settings.job_timeout)
    ).limit(BATCH)
    for job in expired:
        await pipeline.starts.fail_deadline(job)
    # Pending jobs past their queue deadline (`max_queue_seconds`): failed, `queue_timeout`.
    queued_out = await repo.queue_timed_out(BATCH)
    for late in queued_out:
        await pipeline.lifecycle.time_out_queued(late)

    # Whatever this sweep re-sends is stamped, so the next sweeps leave it alone a while.
    recent = moment - timedelta(seconds=max(2 * settings.sweep_interval, settings.dispatch_grace))
    not_recently_sent = Q(dispatched_at=None) | Q(dispatched_at__lt=recent)

    pending = await (
        Job.filter(
            Q(dispatched_at=None, created_at__lt=moment - grace)
            | Q(dispatched_at__lt=moment - lease),
            status=JobStatus.PENDING,
        )
        .limit(BATCH)
        .values_list("id", "provider", "model", "priority", "api_key_id")
    )
    catalog = pipeline.providers.catalog
    # Each at its priority, in its key's turns (at the key's weight Redis keeps).
    redispatch(
        outbox,
        [
            entry(job_id, catalog.for_job(provider, model).name, priority, owner)
            for job_id, provider, model, priority, owner in pending
        ],
    )

    overdue = (
        await Job.filter(
            not_recently_sent, status=JobStatus.RETRYING, next_attempt_at__lt=moment - grace
        )
        .limit(BATCH)
        .values_list("id", flat=True)
    )
    steps = [Next("start", str(job_id)) for job_id in overdue]

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
    for step in steps:
        outbox.send(step.task())
    # Predictions to stop upstream whose cancel failed, or whose message was lost.
    cancels = await upstream_cancels.due(settings.lease_seconds, BATCH)
    for prediction_id in cancels:
        outbox.send(cancel_upstream_task(prediction_id))
    # Finished batches not marked yet (their settle message was lost): marked, webhook sent.
    settled, deliveries = await batches.settle_finished(BATCH)
    for delivery_id in deliveries:
        outbox.send(delivery_task(delivery_id))

    resent = {str(row[0]) for row in pending} | {s.job_id for s in steps}
    if resent:
        await repo.mark_dispatched(resent)
    try:  # expired outputs, and pruning on its own schedule (mediagen.jobs.retention)
        await retention.sweep_retention(pipeline.storage, settings, outbox.client)
    except Exception as exc:  # the database or storage is down: the next sweep goes on
        log.warning("sweep: retention not run: %s", exc)
    if pipeline.capacity is not None:  # health checks of Cog servers, staged outputs
        await pipeline.capacity.sweep(pipeline.lose)
    # Stale queue entries; the starts that fit free slots, after the health checks: a server
    # found good again takes its waiting jobs now, not a sweep later.
    await pipeline.turns.sweep()
    await outbox.flush()
    for kind, found in (
        ("deadline", len(expired)),
        ("undispatched", len(pending)),
        ("retry_due", len(overdue)),
        ("lease_expired", len(stranded)),
        ("upstream_cancel", len(cancels)),
        ("batch_settled", settled),
    ):
        metrics.sweeper_rescued(kind, found)
    if resent or expired or queued_out:
        log.info(
            "sweep: %d to re-dispatch, %d past deadline, %d past their queue deadline",
            len(resent),
            len(expired),
            len(queued_out),
        )
    return len(resent)
