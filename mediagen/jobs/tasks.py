"""Celery tasks: thin wrappers that pass ids, run one async pipeline step on the process's event
loop, and publish the step it asks for next. Results are ignored: Postgres holds the state.

Each first adopts the request id its message carries and the job it is about
(`mediagen.observability.context`), so every line it logs, and every message it sends, carries
them; the coroutine it runs on the loop sees them too (`Runtime.run`)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from celery import Task

from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import CANCEL_UPSTREAM, POLL, START
from mediagen.jobs.sweeper import sweep as sweep_jobs
from mediagen.notify import delivery_task
from mediagen.notify.service import stranded_deliveries
from mediagen.observability import context, metrics, tracing
from mediagen.worker import Runtime, celery_app, runtime


@celery_app.task(bind=True, name=START)
def start(self: Task[Any, Any], job_id: str) -> None:
    """Begin (or retry) a job's generation."""
    context.adopt(self.request.headers or {}, job_id)
    rt = runtime()
    with tracing.step("job.start", job_id, lambda: rt.run(repo.traceparent_of(job_id))):
        rt.run(rt.step(rt.pipeline.start(job_id)))


@celery_app.task(bind=True, name=POLL)
def poll(self: Task[Any, Any], job_id: str, attempt: int) -> None:
    """Look once at a running prediction."""
    context.adopt(self.request.headers or {}, job_id)
    rt = runtime()
    with tracing.step("job.poll", job_id, lambda: rt.run(repo.traceparent_of(job_id))):
        rt.run(rt.step(rt.pipeline.poll(job_id, attempt)))


@celery_app.task(bind=True, name="mediagen.jobs.sweep")
def sweep(self: Task[Any, Any]) -> int:
    """Re-dispatch stranded jobs (see `mediagen.jobs.sweeper`) and lost webhook deliveries."""
    context.adopt(self.request.headers or {})  # none: each job's steps take its row's
    rt = runtime()
    with tracing.unlinked():  # each re-dispatched step rejoins its own job's trace
        return rt.run(_sweep(rt))


async def _none(coro: Coroutine[Any, Any, None]) -> None:
    await coro


async def _sweep(rt: Runtime) -> int:
    jobs = await sweep_jobs(rt.pipeline)
    deliveries = await stranded_deliveries(rt.settings)
    for delivery_id in deliveries:
        rt.outbox.send(delivery_task(delivery_id))
    metrics.sweeper_rescued("delivery", len(deliveries))
    await rt.outbox.flush()
    return jobs + len(deliveries)


@celery_app.task(bind=True, name=CANCEL_UPSTREAM)
def cancel_upstream(self: Task[Any, Any], prediction_id: str) -> None:
    """Stop a canceled job's prediction upstream (best effort; the job is already canceled)."""
    context.adopt(self.request.headers or {})
    rt = runtime()
    rt.run(rt.step(_none(rt.pipeline.cancel_upstream(prediction_id))))
