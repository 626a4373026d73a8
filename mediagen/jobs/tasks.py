"""Celery tasks: thin wrappers that pass ids, run one async pipeline step on the process's event
loop, and publish the step it asks for next. Results are ignored: Postgres holds the state."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from mediagen.jobs.dispatch import CANCEL_UPSTREAM, POLL, START
from mediagen.jobs.sweeper import sweep as sweep_jobs
from mediagen.notify import delivery_task
from mediagen.notify.service import stranded_deliveries
from mediagen.worker import Runtime, celery_app, runtime


@celery_app.task(name=START)
def start(job_id: str) -> None:
    """Begin (or retry) a job's generation."""
    rt = runtime()
    rt.run(rt.step(rt.pipeline.start(job_id)))


@celery_app.task(name=POLL)
def poll(job_id: str, attempt: int) -> None:
    """Look once at a running prediction."""
    rt = runtime()
    rt.run(rt.step(rt.pipeline.poll(job_id, attempt)))


@celery_app.task(name="mediagen.jobs.sweep")
def sweep() -> int:
    """Re-dispatch stranded jobs (see `mediagen.jobs.sweeper`) and lost webhook deliveries."""
    rt = runtime()
    return rt.run(_sweep(rt))


async def _none(coro: Coroutine[Any, Any, None]) -> None:
    await coro


async def _sweep(rt: Runtime) -> int:
    jobs = await sweep_jobs(rt.pipeline)
    deliveries = await stranded_deliveries(rt.settings)
    for delivery_id in deliveries:
        rt.outbox.send(delivery_task(delivery_id))
    await rt.outbox.flush()
    return jobs + len(deliveries)


@celery_app.task(name=CANCEL_UPSTREAM)
def cancel_upstream(prediction_id: str) -> None:
    """Stop a canceled job's prediction upstream (best effort; the job is already canceled)."""
    rt = runtime()
    rt.run(rt.step(_none(rt.pipeline.cancel_upstream(prediction_id))))
