"""Celery tasks: thin wrappers that pass ids and run one step on the process's event loop
(`mediagen.worker_services.Worker`: the pipeline's step, then the step it asks for next published).
Results are ignored: Postgres holds the state.

Each first adopts the request id its message carries and the job it is about
(`mediagen.observability.context`), so every line it logs, and every message it sends, carries
them; the coroutine it runs on the loop sees them too (`Runtime.run`)."""

from __future__ import annotations

from typing import Any

from celery import Task

from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import CANCEL_UPSTREAM, POLL, START, SWEEP
from mediagen.observability import context, tracing
from mediagen.worker import celery_app, runtime


@celery_app.task(bind=True, name=START)
def start(self: Task[Any, Any], job_id: str) -> None:
    """Begin (or retry) a job's generation."""
    context.adopt(self.request.headers or {}, job_id)
    rt = runtime()
    with tracing.step("job.start", job_id, lambda: rt.run(repo.traceparent_of(job_id))):
        rt.run(rt.worker.start(job_id))


@celery_app.task(bind=True, name=POLL)
def poll(self: Task[Any, Any], job_id: str, attempt: int) -> None:
    """Look once at a running prediction."""
    context.adopt(self.request.headers or {}, job_id)
    rt = runtime()
    with tracing.step("job.poll", job_id, lambda: rt.run(repo.traceparent_of(job_id))):
        rt.run(rt.worker.poll(job_id, attempt))


@celery_app.task(bind=True, name=SWEEP)
def sweep(self: Task[Any, Any]) -> int:
    """Re-dispatch stranded jobs (see `mediagen.jobs.sweeper`) and lost webhook deliveries."""
    context.adopt(self.request.headers or {})  # none: each job's steps take its row's
    rt = runtime()
    with tracing.unlinked():  # each re-dispatched step rejoins its own job's trace
        return rt.run(rt.worker.sweep())


@celery_app.task(bind=True, name=CANCEL_UPSTREAM)
def cancel_upstream(self: Task[Any, Any], prediction_id: str) -> None:
    """Stop a canceled job's prediction upstream (best effort; the job is already canceled)."""
    context.adopt(self.request.headers or {})
    rt = runtime()
    rt.run(rt.worker.cancel_upstream(prediction_id))
