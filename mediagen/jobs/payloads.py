"""What a job shows of itself: the one `status` payload, and what the job cost (run metrics).

The `status` payload is what a job's `status` events carry (`mediagen.jobs.events`) and the core
of its client webhooks, which the transition's own statement writes (`repository`): the SQL
there is generated from the same field list, so the two cannot drift. It carries the job's
output value as stored, and its outputs (their keys and places), which `served` turns into the
value a client reads, each file's URL signed then. `status_response` is the body of `GET
/api/v1/status/{id}` (the fast path's and the route's), from a row or a job.

Run metrics: the statement that ends a job records them (`metrics_at_end`: queue, run and
predict time, bytes stored); a job that has none (canceled, failed before its prediction ended,
still running) shows what its timestamps tell (`metrics_of`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from mediagen.jobs import values
from mediagen.jobs.models import Job
from mediagen.jobs.sql import Expr
from mediagen.jobs.states import JobStatus


class _Storage(Protocol):
    async def url_for(self, key: str) -> str: ...


# (payload key, job column): the `status` payload, in order. `result_key` becomes `result_url`
# and `output` with `outputs` the output value with its files' URLs when served (live events,
# webhooks), so no URL is signed before anyone reads it.
STATUS_FIELDS = (
    ("job_id", "id"),
    ("status", "status"),
    ("retry_count", "retry_count"),
    ("error", "error"),
    ("error_code", "error_code"),
    ("attempts", "attempt"),
    ("result_key", "result_key"),
    ("output", "output"),
    ("outputs", "outputs"),
)


def _get(job: Job | Mapping[str, Any], column: str) -> Any:
    """A column of a job, or of a row (a mapping, or an asyncpg record, which is none)."""
    return getattr(job, column) if isinstance(job, Job) else job[column]


def status_payload(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    """The `status` payload of a job, or of a row of the `jobs` table."""
    payload = {key: _get(job, column) for key, column in STATUS_FIELDS}
    payload["job_id"] = str(payload["job_id"])
    payload["status"] = str(JobStatus(payload["status"]))
    return payload


async def served(payload: Mapping[str, Any], storage: _Storage) -> dict[str, Any]:
    """A `status` payload (or a webhook's, which holds one) as a client reads it: its
    `result_key` turned into a `result_url` and its output value shown with its files' URLs
    (`values.shown`), signed now, for a completed job."""
    data = {k: v for k, v in payload.items() if k not in ("result_key", "outputs")}
    key = payload.get("result_key")
    completed = payload.get("status") == JobStatus.COMPLETED
    data["result_url"] = await storage.url_for(key) if key and completed else None
    outputs = (payload.get("outputs") or []) if completed else []
    urls = [await storage.url_for(output["key"]) for output in outputs]
    data["output"] = values.shown(payload.get("output"), outputs, urls)
    return data


def created_payload(job_id: uuid.UUID | str) -> dict[str, Any]:
    """The `status` payload of a job just created (no row read)."""
    return status_payload(
        {"id": job_id, "status": JobStatus.PENDING, "retry_count": 0, "error": None,
         "error_code": None, "attempt": 0, "result_key": None, "output": None, "outputs": []}
    )  # fmt: skip


def status_sql(row: str) -> str:
    """The `status` payload's `jsonb_build_object` arguments for the table alias `row`."""
    columns = {"id": f"{row}.id::text"}
    return ", ".join(f"'{key}', {columns.get(column, f'{row}.{column}')}"
                     for key, column in STATUS_FIELDS)  # fmt: skip


# --- GET /status -----------------------------------------------------------------------------
STATUS_COLUMNS = ("status", "result_key", "created_at", "updated_at", "retry_count")


async def status_response(
    job_id: uuid.UUID, job: Job | Mapping[str, Any], storage: _Storage
) -> dict[str, Any]:
    """`GET /status` (`JobStatusResponse`) of a job, or of a row with STATUS_COLUMNS."""
    key = _get(job, "result_key")
    return {
        "job_id": str(job_id),
        "status": str(JobStatus(_get(job, "status"))),
        "result_url": await storage.url_for(key) if key else None,
        "created_at": _get(job, "created_at"),
        "updated_at": _get(job, "updated_at"),
        "retry_count": _get(job, "retry_count"),
    }


# --- run metrics -----------------------------------------------------------------------------
def metrics_at_end(predict_time: float | None, bytes_stored: int | None) -> Expr:
    """What the job cost, computed by the statement that ends it (its `now()` is the job's
    `completed_at`; `started_at` is the first attempt's start)."""
    return Expr(
        "jsonb_build_object("
        "'queue_seconds', round(extract(epoch FROM started_at - created_at)::numeric, 3), "
        "'run_seconds', round(extract(epoch FROM now() - started_at)::numeric, 3), "
        "'predict_time', {}::float8, 'bytes_stored', {}::bigint)",
        (predict_time, bytes_stored),
    )


def metrics_of(job: Job) -> dict[str, Any] | None:
    """The metrics the end of its prediction wrote; else (canceled, failed before the
    prediction ended, still running) what its timestamps tell: queue time once started, run
    time once finished."""
    if job.metrics is not None or job.started_at is None:
        return job.metrics
    ran = job.completed_at - job.started_at if job.completed_at else None
    return {
        "queue_seconds": round((job.started_at - job.created_at).total_seconds(), 3),
        "run_seconds": None if ran is None else round(ran.total_seconds(), 3),
    }


def predict_time(job: Job) -> float | None:
    """How long the model ran: the provider's own measure, else the job's run time."""
    metrics = metrics_of(job) or {}
    value = metrics.get("predict_time") or metrics.get("run_seconds")
    return None if value is None else round(float(value), 3)
