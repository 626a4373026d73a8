"""Handing pending jobs to the workers, and where a pending job stands in the queue.

A job is dispatched by publishing its `start` task and indexing it in the pending-queue index
(a Redis sorted set ordered by creation time, `mediagen.broker.QUEUE_INDEX`), in one batch of
the process's outbox, only after its row is committed. The index gives `queue_position` in
O(log n) (ZRANK) whatever the backlog; a job leaves it when it leaves `pending`
(`events.announce`). After a crash between a commit and its announcement the index can hold a
job that already started: the sweeper removes such entries from the head of the queue.

The index holds the pending jobs no worker has looked at yet. A Cog job leaves it when its
start step runs: it then either holds a slot or waits in its model's own queue
(`mediagen.providers.cog_slots`), where its position is counted, so it is not counted ahead
of other models' jobs while it waits for a GPU.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import datetime

import redis.asyncio as aioredis

from mediagen.broker import QUEUE_INDEX, Outbox, Task
from mediagen.jobs.states import JobStatus

START = "mediagen.jobs.start"
POLL = "mediagen.jobs.poll"
CANCEL_UPSTREAM = "mediagen.jobs.cancel_upstream"


def cancel_upstream_task(prediction_id: str) -> Task:
    """Stop a prediction upstream (recorded in `upstream_cancels` first)."""
    return Task(CANCEL_UPSTREAM, (prediction_id,))


def queue_order(created_at: datetime) -> float:
    """A pending job's place in the index: its creation time in µs (exact in a double)."""
    return float(int(created_at.timestamp()) * 1_000_000 + created_at.microsecond)


def created_payload(job_id: uuid.UUID) -> dict[str, object]:
    """The `status` event of a job that was just created (what `events.payload_of` gives)."""
    return {
        "job_id": str(job_id),
        "status": str(JobStatus.PENDING),
        "retry_count": 0,
        "error": None,
        "attempts": 0,
        "result_key": None,
    }


def dispatch_new(outbox: Outbox, job_id: uuid.UUID, created_at: datetime) -> asyncio.Future[bool]:
    """A new job's `pending` event, its place in the queue, and its start task."""
    outbox.event(job_id, "status", created_payload(job_id))
    outbox.enqueue(job_id, queue_order(created_at))
    return outbox.send(Task(START, (str(job_id),)))


def redispatch(outbox: Outbox, pending: Iterable[tuple[uuid.UUID, datetime]]) -> None:
    """Pending jobs whose start may have been lost: index them again and resend the start."""
    for job_id, created_at in pending:
        outbox.enqueue(job_id, queue_order(created_at))
        outbox.send(Task(START, (str(job_id),)))


async def queue_position(client: aioredis.Redis, job_id: uuid.UUID) -> int | None:
    """How many pending jobs are ahead of this one; None if the index does not hold it (not yet
    dispatched, or Redis lost it: the sweeper indexes it again when it re-dispatches it)."""
    rank: int | None = await client.zrank(QUEUE_INDEX, str(job_id))  # type: ignore[assignment]
    return rank
