"""Batches: many job requests accepted all or none, followed and canceled as one."""

from __future__ import annotations

import uuid

from mediagen.broker import Task

SETTLE_TASK = "mediagen.batches.settle"  # mediagen.batches.tasks


def settle_task(batch_id: uuid.UUID | str) -> Task:
    """Look whether the batch is finished (sent when one of its jobs reaches a terminal state):
    the first look that finds it so marks it and writes its `batch.completed` webhook."""
    return Task(SETTLE_TASK, (str(batch_id),))
