"""Handing pending jobs to the workers, and where a pending job stands in the queue.

A job is dispatched, only after its row is committed, by queueing it (`mediagen.scheduling`:
its model's queue, at the end of its key's turns) and publishing a `start` task (to the kombu
priority list of its priority, `mediagen.jobs.priority`), in one batch of the process's outbox.
A start message does not start the job it names: it starts the job whose turn it is
(`mediagen.jobs.turns`), so the messages already in the broker serve every key in turn.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mediagen.broker import Outbox, Task
from mediagen.jobs.payloads import created_payload
from mediagen.jobs.priority import kombu_priority
from mediagen.jobs.states import Priority
from mediagen.scheduling import Entry, enqueue, level_of

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


def start_task(job_id: uuid.UUID | str, priority: Priority | str | None = None) -> Task:
    """A start message for a pending job, on the broker list of its priority."""
    return Task(START, (str(job_id),), priority=kombu_priority(priority))


def level_start(job_id: str, level: str) -> Task:
    """A start message for a job queued at `level` (`mediagen.scheduling.level_of`)."""
    rank = int(level)
    return start_task(job_id, next(p for p in Priority if p.rank == rank))


def entry(
    job_id: uuid.UUID | str,
    model: str,
    priority: Priority | str | None,
    key: uuid.UUID | None,
    weight: int = 0,
) -> Entry:
    """A pending job's place in the queues: its model's, at its priority's level, in its key's
    turns (anonymous callers share one)."""
    rank = Priority(priority).rank if priority else Priority.NORMAL.rank
    return Entry(job_id, model, level_of(rank), str(key) if key else "-", weight)


def dispatch(outbox: Outbox, entries: Sequence[Entry]) -> asyncio.Future[bool] | None:
    """New jobs: each one's `pending` event, its place in the queues, and a start message."""
    for queued in entries:
        outbox.event(queued.job_id, "status", created_payload(queued.job_id))
    return redispatch(outbox, entries)


def redispatch(outbox: Outbox, entries: Sequence[Entry]) -> asyncio.Future[bool] | None:
    """Queue jobs (one still queued keeps its place) and send a start message for each, at
    its own priority; the future of the batch they went in (None: none)."""
    enqueue(outbox, entries)
    done = None
    for queued in entries:
        done = outbox.send(level_start(str(queued.job_id), queued.level))
    return done
