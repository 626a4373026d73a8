"""The batch task: a thin wrapper that looks whether a batch finished (`repository.settle`) and
sends the `batch.completed` delivery it wrote."""

from __future__ import annotations

from typing import Any

from celery import Task

from mediagen.batches import SETTLE_TASK
from mediagen.batches import repository as repo
from mediagen.notify import delivery_task
from mediagen.observability import context
from mediagen.worker import Runtime, celery_app, runtime


@celery_app.task(bind=True, name=SETTLE_TASK)
def settle(self: Task[Any, Any], batch_id: str) -> None:
    """Mark the batch finished if it is (once), and deliver its webhook."""
    context.adopt(self.request.headers or {})
    rt = runtime()
    rt.run(_settle(rt, batch_id))


async def _settle(rt: Runtime, batch_id: str) -> None:
    _, deliveries = await repo.settle(batch_id)
    for delivery_id in deliveries:
        rt.outbox.send(delivery_task(delivery_id))
    await rt.outbox.flush()
