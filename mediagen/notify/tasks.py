"""The delivery task: hands the attempt to the worker's event loop and returns at once, so a
slow receiver never holds a task thread (`mediagen.notify.delivery.Deliverer`)."""

from __future__ import annotations

from typing import Any

from celery import Task

from mediagen.notify import DELIVER_TASK
from mediagen.observability import context
from mediagen.worker import celery_app, runtime


@celery_app.task(bind=True, name=DELIVER_TASK)
def deliver(self: Task[Any, Any], delivery_id: str, deferred: int = 0) -> None:
    context.adopt(self.request.headers or {})  # the attempt names its job (delivery.attempt)
    rt = runtime()
    rt.run(rt.worker.deliver(delivery_id, deferred))
