"""The batch task: a thin wrapper that looks whether a batch finished (`repository.settle`) and
sends the `batch.completed` delivery it wrote."""

from __future__ import annotations

from typing import Any

from celery import Task

from mediagen.batches import SETTLE_TASK
from mediagen.observability import context
from mediagen.worker import celery_app, runtime


@celery_app.task(bind=True, name=SETTLE_TASK)
def settle(self: Task[Any, Any], batch_id: str) -> None:
    """Mark the batch finished if it is (once), and deliver its webhook."""
    context.adopt(self.request.headers or {})
    rt = runtime()
    rt.run(rt.worker.settle(batch_id))
