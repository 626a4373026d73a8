"""Batches: many job requests accepted all or none, followed and canceled as one."""

from __future__ import annotations

import uuid

from mediagen.broker import Task

SETTLE_TASK = "mediagen.batches.settle"  # mediagen.batches.tasks


# Set while a batch's settle message waits (`Outbox.send_once`): its jobs' ends send one message,
# not one each (10,000 jobs ending would queue 10,000 looks ahead of other work). The task
# deletes it before it looks, so an end after that sends another; it expires in case the
# message is lost (the sweeper settles what a lost message left).
SETTLE_PENDING = "mediagen:settle:"
SETTLE_PENDING_SECONDS = 60.0


def settle_marker(batch_id: uuid.UUID | str) -> str:
    return f"{SETTLE_PENDING}{batch_id}"


def settle_task(batch_id: uuid.UUID | str) -> Task:
    """Look whether the batch is finished (sent when one of its jobs reaches a terminal state):
    the first look that finds it so marks it and writes its `batch.completed` webhook."""
    return Task(SETTLE_TASK, (str(batch_id),))
