"""What a committed job write announces: derived from the write itself (`repository.Moved`).

After a write has committed, `announce` publishes through the process's `Outbox`, batched:

- the text it added to the job's logs (a `logs` event with its byte offset), first;
- the chunks a streaming model added to the job's output (an `output` event with the index of
  the first);
- a new progress (a `progress` event);
- for a transition: the job's removal from its queue (`mediagen.scheduling`) once it has left
  `pending`, a `status` event on the job's Redis Stream (`mediagen:events:{job_id}`, served as
  Server-Sent Events by `mediagen.jobs.live`), and, when a job of a batch reached an outcome, a
  task that looks whether its batch finished with it (`mediagen.batches`);
- a delivery task for each client webhook delivery the same statement wrote.

Callers do not announce by hand: `mediagen.jobs.lifecycle` calls this after each move.

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

from mediagen.batches import SETTLE_PENDING_SECONDS, settle_marker, settle_task
from mediagen.broker import STREAM_MAXLEN, Outbox, stream_key
from mediagen.jobs.joblogs import Grown
from mediagen.jobs.payloads import status_payload
from mediagen.jobs.statements import Moved
from mediagen.jobs.states import OUTCOMES, JobStatus
from mediagen.notify import delivery_task
from mediagen.scheduling import remove

__all__ = [
    "STREAM_MAXLEN",
    "Streamed",
    "announce",
    "logs_payload",
    "order",
    "output_payload",
    "stream_key",
]
# What a write added to a streaming job's output: the new chunks, and the index of the first.
Streamed = tuple[list[Any], int]


def order(payload: dict[str, Any]) -> tuple[int, int]:
    """Strictly increasing over a job's transitions: a later state sorts after an earlier one."""
    return int(payload["attempts"]), JobStatus(payload["status"]).rank


def announce(
    outbox: Outbox,
    moved: Moved,
    *,
    progress: dict[str, int] | None = None,
    grown: Grown | None = None,
    streamed: Streamed | None = None,
) -> asyncio.Future[bool] | None:
    """Publish what the committed write `moved` means (module docstring). `progress`, `grown`
    (logs) and `streamed` (output chunks): what the write stored of them, when it stored any.
    The future of the `status` event for a transition (None for another write)."""
    job = moved.job
    if grown is not None:
        outbox.event(job.id, "logs", logs_payload(job.id, grown.new, grown.offset))
    if streamed is not None:
        outbox.event(job.id, "output", output_payload(job.id, job.attempt, *streamed))
    if progress is not None:
        outbox.event(job.id, "progress", progress)
    for delivery_id in moved.deliveries:
        outbox.send(delivery_task(delivery_id))
    if moved.was is None:
        return None
    if job.status is not JobStatus.PENDING:
        remove(outbox, [job.id])
    if job.batch_id is not None and job.status in OUTCOMES:
        # Its batch may have finished with it: one look waits at most.
        outbox.send_once(
            settle_task(job.batch_id), settle_marker(job.batch_id), SETTLE_PENDING_SECONDS
        )
    return outbox.event(job.id, "status", status_payload(job))


def output_payload(
    job_id: uuid.UUID | str, attempt: int, chunks: list[Any], offset: int
) -> dict[str, Any]:
    """Chunks a streaming model added to the output of the job's `attempt`, and the index of
    the first in it, so a reader appends events without a gap or a repeat."""
    return {"job_id": str(job_id), "attempt": attempt, "output": chunks, "offset": offset}


def logs_payload(job_id: uuid.UUID | str, text: str, offset: int) -> dict[str, Any]:
    """The text a write added to the job's logs, and where it starts (bytes), so a reader
    appends events without a gap or a repeat (`mediagen.jobs.joblogs`)."""
    return {"job_id": str(job_id), "logs": text, "offset": offset}
