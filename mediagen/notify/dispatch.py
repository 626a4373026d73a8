"""Publishing delivery attempts (sync kombu: async callers use a thread)."""

from __future__ import annotations

import logging

from mediagen.worker import QUEUE, celery_app

log = logging.getLogger(__name__)
TASK = "mediagen.notify.deliver"


def send_delivery(delivery_id: str, countdown: float | None = None) -> bool:
    try:
        celery_app.send_task(
            TASK, args=[delivery_id], queue=QUEUE, countdown=countdown or None, retry=True
        )
    except Exception as exc:
        log.warning("could not publish webhook delivery %s: %s", delivery_id, exc)
        return False
    return True
