"""Every write to a job: single guarded UPDATEs (compare-and-set on status, and on the attempt).

A duplicated, late or concurrent task finds the guard false, updates nothing and stops, so a job
can never move backwards, run one attempt twice, or reach a terminal state twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.expressions import F, Q

from mediagen.jobs import events
from mediagen.jobs.models import Job
from mediagen.jobs.states import ALLOWED_FROM, JobStatus


def now() -> datetime:
    return datetime.now(UTC)


async def get(job_id: uuid.UUID | str) -> Job | None:
    return await Job.get_or_none(id=job_id)


async def transition(
    job_id: uuid.UUID | str,
    to: JobStatus,
    *,
    attempt: int | None = None,
    allowed_from: Iterable[JobStatus] | None = None,
    **fields: Any,
) -> bool:
    """Move the job to `to` if it is in an allowed state (and on `attempt`); True if it moved."""
    query = Job.filter(id=job_id, status__in=list(allowed_from or ALLOWED_FROM[to]))
    if attempt is not None:
        query = query.filter(attempt=attempt)
    moved = await query.update(status=to, updated_at=now(), **fields) == 1
    if moved:
        await events.job_moved(job_id, to)
    return moved


async def claim(job: Job, lease_seconds: float) -> bool:
    """Start a new attempt: pending/retrying -> processing, or take over a processing job whose
    owner died before it recorded a prediction (its lease expired)."""
    moment = now()
    stranded = Q(status=JobStatus.PROCESSING, lease_expires_at__lt=moment, prediction_id=None)
    updated = await Job.filter(
        Q(status__in=[JobStatus.PENDING, JobStatus.RETRYING]) | stranded,
        id=job.id,
        attempt=job.attempt,
    ).update(
        status=JobStatus.PROCESSING,
        attempt=F("attempt") + 1,
        lease_expires_at=moment + timedelta(seconds=lease_seconds),
        started_at=job.started_at or moment,
        next_attempt_at=None,
        updated_at=moment,
    )
    if updated == 1:
        await events.job_moved(job.id, JobStatus.PROCESSING)
    return updated == 1


async def update_running(job_id: uuid.UUID | str, attempt: int, **fields: Any) -> bool:
    """Write to a processing job only while `attempt` still owns it."""
    return (
        await Job.filter(id=job_id, status=JobStatus.PROCESSING, attempt=attempt).update(
            updated_at=now(), **fields
        )
        == 1
    )


async def renew_lease(
    job_id: uuid.UUID | str, attempt: int, lease_seconds: float, **fields: Any
) -> bool:
    return await update_running(
        job_id, attempt, lease_expires_at=now() + timedelta(seconds=lease_seconds), **fields
    )


async def mark_dispatched(job_ids: Iterable[uuid.UUID | str]) -> None:
    await Job.filter(id__in=list(job_ids)).update(dispatched_at=now())


async def schedule_retry(job: Job, attempt: int, error: str, delay: float) -> bool:
    """processing -> retrying, counting the retry and remembering why."""
    moment = now()
    return await transition(
        job.id,
        JobStatus.RETRYING,
        attempt=attempt,
        retry_count=F("retry_count") + 1,
        error=error,
        lease_expires_at=None,
        next_attempt_at=moment + timedelta(seconds=delay),
    )


async def fail(job_id: uuid.UUID | str, error: str, attempt: int | None = None) -> bool:
    moment = now()
    return await transition(
        job_id,
        JobStatus.FAILED,
        attempt=attempt,
        error=error,
        completed_at=moment,
        lease_expires_at=None,
        next_attempt_at=None,
    )


async def complete(
    job_id: uuid.UUID | str,
    attempt: int,
    result_key: str,
    outputs: list[dict[str, Any]],
    **fields: Any,
) -> bool:
    return await transition(
        job_id,
        JobStatus.COMPLETED,
        attempt=attempt,
        result_key=result_key,
        outputs=outputs,
        error=None,
        completed_at=now(),
        lease_expires_at=None,
        **fields,
    )
