"""Publishing job steps to the broker. Only ever called after the job's row is committed.

Publishing is synchronous (kombu); async callers run it in a thread. A failed publish loses
nothing: the sweeper re-dispatches any job whose dispatch or lease has run out.
"""

from __future__ import annotations

import logging

from mediagen.jobs.pipeline import Next
from mediagen.worker import QUEUE, celery_app

log = logging.getLogger(__name__)


def send(step: Next) -> bool:
    """Publish one step; False (logged) if the broker did not take it."""
    args: list[object] = [step.job_id] if step.attempt is None else [step.job_id, step.attempt]
    try:
        celery_app.send_task(
            f"mediagen.jobs.{step.step}",
            args=args,
            queue=QUEUE,
            countdown=step.countdown or None,
            retry=True,
        )
    except Exception as exc:  # broker down or refusing: the sweeper will dispatch it later
        log.warning("could not publish %s for job %s: %s", step.step, step.job_id, exc)
        return False
    return True


def send_cancel(prediction_id: str) -> bool:
    """Ask a worker to cancel a prediction upstream (the job is already canceled)."""
    try:
        celery_app.send_task(
            "mediagen.jobs.cancel_upstream", args=[prediction_id], queue=QUEUE, retry=True
        )
    except Exception as exc:
        log.warning("could not publish cancel of prediction %s: %s", prediction_id, exc)
        return False
    return True
