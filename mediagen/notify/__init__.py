"""Client webhooks: signed POSTs to the URL a client gave with its job (see docs/api.md,
"Client webhooks")."""

from __future__ import annotations

import uuid

from mediagen.broker import WEBHOOK_QUEUE, Task

DELIVER_TASK = "mediagen.notify.deliver"  # one delivery attempt (mediagen.notify.tasks)


def delivery_task(delivery_id: uuid.UUID | str, countdown: float = 0.0, deferred: int = 0) -> Task:
    """The task message of a delivery's (next) attempt, on the webhook deliveries' queue;
    `deferred`: how often it was put off so far without an attempt (its next wait grows)."""
    args = (str(delivery_id), deferred) if deferred else (str(delivery_id),)
    return Task(DELIVER_TASK, args, countdown, queue=WEBHOOK_QUEUE)
