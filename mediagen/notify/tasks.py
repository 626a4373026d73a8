"""The delivery task: hands the attempt to the worker's event loop and returns at once, so a
slow receiver never holds a task thread (`mediagen.notify.delivery.Deliverer`)."""

from __future__ import annotations

from mediagen.notify import DELIVER_TASK
from mediagen.worker import celery_app, runtime


@celery_app.task(name=DELIVER_TASK)
def deliver(delivery_id: str) -> None:
    rt = runtime()
    rt.loop.call_soon_threadsafe(rt.deliverer.submit, delivery_id)
