"""Handing pending jobs to the workers, and where a pending job stands in the queue.

A job is dispatched by publishing its `start` task (to the kombu priority list of its priority,
`mediagen.jobs.priority`) and indexing it in the pending-queue index (a Redis sorted set ordered
by priority, then creation time, `mediagen.broker.QUEUE_INDEX`), in one batch of
the process's outbox, only after its row is committed. The index gives `queue_position` in
O(log n) (ZRANK) whatever the backlog; a job leaves it when it leaves `pending`
(`events.announce`). After a crash between a commit and its announcement the index can hold a
job that already started: the sweeper removes such entries from the head of the queue.

The index holds the pending jobs no worker has looked at yet. A Cog job leaves it when its
start step runs: it then either holds a slot or waits in its model's own queue
(`mediagen.providers.cog.slots`), where its position is counted, so it is not counted ahead
of other models' jobs while it waits for a GPU.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis

from mediagen.broker import QUEUE_INDEX, Outbox, Task
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import created_payload
from mediagen.jobs.priority import kombu_priority
from mediagen.jobs.states import Priority
from mediagen.providers.cog.slots import queue_position as cog_queue_position

START = "mediagen.jobs.start"
POLL = "mediagen.jobs.poll"
CANCEL_UPSTREAM = "mediagen.jobs.cancel_upstream"
SWEEP = "mediagen.jobs.sweep"


@dataclass(frozen=True)
class Next:
    """A job's step to run next (a pipeline step's answer), after `countdown` seconds."""

    step: Literal["start", "poll"]
    job_id: str
    attempt: int | None = None
    countdown: float = 0.0

    def task(self) -> Task:
        args = (self.job_id,) if self.attempt is None else (self.job_id, self.attempt)
        return Task(POLL if self.step == "poll" else START, args, self.countdown)


def poll_task(job_id: uuid.UUID | str, attempt: int) -> Task:
    """Look at a running attempt's prediction now (an upstream webhook said it finished)."""
    return Next("poll", str(job_id), attempt).task()


def cancel_upstream_task(prediction_id: str) -> Task:
    """Stop a prediction upstream (recorded in `upstream_cancels` first)."""
    return Task(CANCEL_UPSTREAM, (prediction_id,))


# A priority band is wider than any creation time in µs (until 2065), and three bands stay
# below 2**53: every score is an exact integer in a double.
BAND = 3_000_000_000_000_000


def queue_order(created_at: datetime, priority: Priority | str | None = None) -> float:
    """A pending job's place in the index (and in its Cog model's queue): its priority's band
    (high first), then its creation time in µs."""
    rank = Priority(priority).rank if priority else Priority.NORMAL.rank
    micros = int(created_at.timestamp()) * 1_000_000 + created_at.microsecond
    return float(BAND * (Priority.HIGH.rank - rank) + micros)


def order_priority(order: float) -> Priority:
    """The priority a `queue_order` score was made with."""
    rank = Priority.HIGH.rank - min(int(order) // BAND, Priority.HIGH.rank)
    return next(p for p in Priority if p.rank == rank)


def order_created_micros(order: float) -> int:
    """The creation time (µs since the epoch) a `queue_order` score was made with."""
    return int(order) % BAND


def start_task(job_id: uuid.UUID | str, priority: Priority | str | None = None) -> Task:
    """A pending job's first start, on the broker list of its priority."""
    return Task(START, (str(job_id),), priority=kombu_priority(priority))


def dispatch_new(
    outbox: Outbox,
    job_id: uuid.UUID,
    created_at: datetime,
    priority: Priority | str | None = None,
) -> asyncio.Future[bool]:
    """A new job's `pending` event, its place in the queue, and its start task."""
    outbox.event(job_id, "status", created_payload(job_id))
    outbox.enqueue(job_id, queue_order(created_at, priority))
    return outbox.send(start_task(job_id, priority))


def redispatch(
    outbox: Outbox, pending: Iterable[tuple[uuid.UUID, datetime, Priority | str | None]]
) -> None:
    """Pending jobs whose start may have been lost: index them again and resend the start,
    each at its own priority."""
    for job_id, created_at, priority in pending:
        outbox.enqueue(job_id, queue_order(created_at, priority))
        outbox.send(start_task(job_id, priority))


async def queue_position(client: aioredis.Redis, job: Job) -> int | None:
    """How many pending jobs are ahead of this one; None if the index does not hold it (not yet
    dispatched, or Redis lost it: the sweeper indexes it again when it re-dispatches it). A Cog
    job's is its rank among its model's jobs (`mediagen.providers.cog.slots.queue_position`)."""
    if job.provider == "cog" and job.model:
        order = queue_order(job.created_at, job.priority)
        return await cog_queue_position(client, job.model, job.id, order)
    rank: int | None = await client.zrank(QUEUE_INDEX, str(job.id))  # type: ignore[assignment]
    return rank
