"""The delivery task: one attempt on the process's event loop; a retry is a new message with a
countdown (no sleeping in the pool)."""

from __future__ import annotations

from mediagen.broker import Task
from mediagen.notify import DELIVER_TASK
from mediagen.notify.delivery import attempt
from mediagen.worker import celery_app, runtime


@celery_app.task(name=DELIVER_TASK)
def deliver(delivery_id: str) -> None:
    rt = runtime()
    countdown = rt.run(attempt(delivery_id, rt.settings, rt.storage))
    if countdown is not None:
        rt.run(rt.publish(Task(DELIVER_TASK, (delivery_id,), countdown)))
