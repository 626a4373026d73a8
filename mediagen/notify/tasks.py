"""The delivery task: one attempt on the process's event loop; a retry is a new message with a
countdown (no sleeping in the pool)."""

from __future__ import annotations

from mediagen.notify.delivery import attempt
from mediagen.notify.dispatch import TASK, send_delivery
from mediagen.worker import celery_app, runtime


@celery_app.task(name=TASK)
def deliver(delivery_id: str) -> None:
    rt = runtime()
    countdown = rt.run(attempt(delivery_id, rt.settings, rt.storage))
    if countdown is not None:
        send_delivery(delivery_id, countdown)
