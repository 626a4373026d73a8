"""What a committed job write announces, and the payloads of live events.

After each successful write (`mediagen.jobs.repository`) the process that made it calls
`announce`: a `status` event on the job's Redis Stream (`mediagen:events:{job_id}`, served as
Server-Sent Events by `mediagen.jobs.live`), the job's removal from the pending-queue index once
it has left `pending`, and a delivery task for each client webhook delivery the same statement
wrote; and, when a job of a batch finished, a task that looks whether its batch finished with
it (`mediagen.batches`). All of it goes through the process's `Outbox`, batched, after the
commit.

Postgres stays the source of truth; the stream only says that something changed. Publishing
never fails a transition: if Redis is down the events are lost (readers reconcile with Postgres
when the stream is quiet), and delivery rows that were not announced are re-sent by the sweeper.

Every transition raises the pair (attempt, rank of the state), so readers can drop a stale or
duplicated `status` event by comparing it with the last one they sent.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from mediagen.batches import settle_task
from mediagen.broker import STREAM_MAXLEN, Outbox, stream_key
from mediagen.jobs.joblogs import Grown
from mediagen.jobs.models import Job
from mediagen.jobs.repository import Moved
from mediagen.jobs.states import JobStatus
from mediagen.notify import delivery_task

__all__ = ["STREAM_MAXLEN", "announce", "order", "payload_of", "status_payload", "stream_key"]

_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.RETRYING: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELED: 3,
    JobStatus.EXPIRED: 4,  # after completed: a completed job's outputs expired later
}


def status_payload(job_id: uuid.UUID | str, row: dict[str, Any]) -> dict[str, Any]:
    """What a `status` event stores (`result_key` becomes `result_url` when served)."""
    return {
        "job_id": str(job_id),
        "status": str(JobStatus(row["status"])),
        "retry_count": row["retry_count"],
        "error": row["error"],
        "attempts": row["attempt"],
        "result_key": row["result_key"],
    }


def payload_of(job: Job) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "status": str(job.status),
        "retry_count": job.retry_count,
        "error": job.error,
        "attempts": job.attempt,
        "result_key": job.result_key,
    }


def order(payload: dict[str, Any]) -> tuple[int, int]:
    """Strictly increasing over a job's transitions: a later state sorts after an earlier one."""
    return int(payload["attempts"]), _RANK[JobStatus(payload["status"])]


def announce(
    outbox: Outbox, moved: Moved, progress: dict[str, int] | None = None
) -> asyncio.Future[bool]:
    """Publish what the committed write `moved` means (module docstring). `progress`: a new
    progress to announce before the status (the final one, stored with the completion)."""
    job = moved.job
    if progress is not None:
        outbox.event(job.id, "progress", progress)
    if job.status is not JobStatus.PENDING:
        outbox.dequeue([job.id])
    for delivery_id in moved.deliveries:
        outbox.send(delivery_task(delivery_id))
    if job.batch_id is not None and job.status.is_terminal and job.status is not JobStatus.EXPIRED:
        outbox.send(settle_task(job.batch_id))  # its batch may have finished with it
    return outbox.event(job.id, "status", payload_of(job))


def announce_progress(
    outbox: Outbox, moved: Moved, progress: dict[str, int]
) -> asyncio.Future[bool]:
    """A running job's new progress (stored by `moved`), and its webhook deliveries."""
    for delivery_id in moved.deliveries:
        outbox.send(delivery_task(delivery_id))
    return outbox.event(moved.job.id, "progress", progress)


def announce_logs(outbox: Outbox, job_id: uuid.UUID | str, grown: Grown | None) -> None:
    """The text a committed write added to the job's logs, and where it starts (bytes), so a
    reader appends events without a gap or a repeat (`mediagen.jobs.joblogs`)."""
    if grown is not None:
        outbox.event(job_id, "logs", logs_payload(job_id, grown.new, grown.offset))


def logs_payload(job_id: uuid.UUID | str, text: str, offset: int) -> dict[str, Any]:
    return {"job_id": str(job_id), "logs": text, "offset": offset}


def announce_created(outbox: Outbox, job: Job) -> asyncio.Future[bool]:
    """The `pending` event of a new job, before it is dispatched."""
    return outbox.event(job.id, "status", payload_of(job))
