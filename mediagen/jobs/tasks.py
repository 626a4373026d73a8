"""Celery tasks: thin wrappers that pass ids, run one async pipeline step on the process's event
loop, and publish the step it asks for next. Results are ignored: Postgres holds the state."""

from __future__ import annotations

from mediagen.jobs.dispatch import send
from mediagen.jobs.pipeline import Next
from mediagen.jobs.sweeper import sweep as sweep_jobs
from mediagen.notify.dispatch import send_delivery
from mediagen.notify.service import stranded_deliveries
from mediagen.worker import celery_app, runtime


def _then(step: Next | None) -> None:
    if step is not None:
        send(step)


@celery_app.task(name="mediagen.jobs.start")
def start(job_id: str) -> None:
    """Begin (or retry) a job's generation."""
    rt = runtime()
    _then(rt.run(rt.pipeline.start(job_id)))


@celery_app.task(name="mediagen.jobs.poll")
def poll(job_id: str, attempt: int) -> None:
    """Look once at a running prediction."""
    rt = runtime()
    _then(rt.run(rt.pipeline.poll(job_id, attempt)))


@celery_app.task(name="mediagen.jobs.sweep")
def sweep() -> int:
    """Re-dispatch stranded jobs (see `mediagen.jobs.sweeper`) and lost webhook deliveries."""
    rt = runtime()
    steps = rt.run(sweep_jobs(rt.pipeline))
    for step in steps:
        send(step)
    deliveries = rt.run(stranded_deliveries(rt.settings))
    for delivery_id in deliveries:
        send_delivery(delivery_id)
    return len(steps) + len(deliveries)


@celery_app.task(name="mediagen.jobs.cancel_upstream")
def cancel_upstream(prediction_id: str) -> None:
    """Stop a canceled job's prediction upstream (best effort; the job is already canceled)."""
    rt = runtime()
    rt.run(rt.pipeline.cancel_quietly(prediction_id))
