"""The API side of jobs: accept a job durably, then dispatch it; read jobs back for clients.

Accepting is one statement (`repository.insert`: the row, its webhook, and the owner's
unfinished-jobs counter, which enforces MAX_JOBS_IN_FLIGHT). Only after it has committed does
the process's outbox publish the job's start, in a batch with other requests' (no thread hop,
no wait: the 201 does not depend on Redis). If that publish fails the job is still accepted:
its `dispatched_at` is cleared and the sweeper dispatches it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.responses import Response

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, get_catalog
from mediagen.catalog.listing import InputSchemas
from mediagen.config import Settings
from mediagen.errors import ConflictError, NotFoundError
from mediagen.jobs import paging, thumbnails, values
from mediagen.jobs import repository as repo
from mediagen.jobs.admission import Admission, dispatch
from mediagen.jobs.lifecycle import Lifecycle
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import metrics_of, status_response
from mediagen.jobs.schemas import (
    GenerateRequest,
    JobDetail,
    JobQuery,
    JobStatusResponse,
    OutputInfo,
)
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owned, owner_id
from mediagen.observability import context, logs, metrics
from mediagen.scheduling import queue_position
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)
_created_log = logs.FastLogger(__name__)


async def create_job(
    request: GenerateRequest,
    settings: Settings,
    outbox: Outbox,
    owner: ApiKey | None = None,
    catalog: Catalog | None = None,
    surface: tuple[str, str] | None = None,
    schemas: InputSchemas | None = None,
    job_id: uuid.UUID | None = None,
    file_urls: Sequence[str] = (),
) -> uuid.UUID:
    """Accept a job (durable once this returns) and have it dispatched after the commit; its id
    is `job_id` if given (reserved by an Idempotency-Key's claim), else a new one. Its
    `model` picks its route in `catalog` (422 if none): the provider its row records, and the
    public name it keeps (`Catalog.job_model`); the other checks are `admission`'s (`schemas`:
    the process's input schemas, which a Cog job's inputs are checked against). `surface`: the
    other API that made it and the base URL it was called at (`("replicate", base)`: its
    webhooks take that API's shape, and its refusals call the inputs `input`); `file_urls`: where
    that API's uploads are (`mediagen.files.inputs.by_url`)."""
    catalog = catalog or get_catalog()
    field = "parameters" if surface is None else "input"
    admission = Admission(
        settings, owner, catalog, schemas=schemas, field=field, file_urls=file_urls
    )
    job = await admission.job(request, job_id=job_id)
    # The rest of this request's lines (and an error report) are about the job, from here on:
    # its input files are stored under its id, and it is written next (or refused).
    context.job_id.set(str(job.id))
    # Input files it names: checked (422), inline ones stored; nothing to do for most jobs.
    [job] = await admission.inputs([job])
    created_at = await repo.insert(
        job.id,
        prompt=job.prompt,
        parameters=job.parameters,
        model=job.model,
        provider=job.provider,
        owner=owner_id(owner),
        max_in_flight=settings.max_jobs_in_flight,
        webhook=job.webhook,
        webhook_events=job.webhook_events,
        request_id=context.request_id.get(),
        traceparent=context.current_headers().get("traceparent"),
        priority=job.priority,
        retention_seconds=job.retention_seconds,
        input_files=job.input_files,
        surface=surface[0] if surface else None,
        surface_base=surface[1] if surface else None,
        max_queue_seconds=job.max_queue_seconds,
    )
    if created_at is None:
        raise await admission.refused([job])
    # Not the module's logger: a submit is a hot path (mediagen.observability.logs.FastLogger).
    _created_log.info(
        "job created",
        model=job.model or catalog.default.name,  # no model named, and the default unlisted
        provider=job.provider,
        prompt=request.prompt,  # masked unless LOG_PROMPTS=true (observability.logs)
        webhook=request.webhook,
    )
    metrics.job_created(job.provider, job.model)
    dispatch(outbox, [job], owner, catalog, f"job {job.id}")
    return job.id


def accepted_body(job_id: uuid.UUID) -> dict[str, Any]:
    """The 201 of `POST /generate` (`GenerateResponse`)."""
    return {
        "job_id": str(job_id),
        "status": str(JobStatus.PENDING),
        "message": f"Job created successfully. Use job ID {job_id} to check status.",
    }


def json_response(data: dict[str, Any], status_code: int = 200) -> Response:
    """JSON straight from a dict (UTC datetimes as `...Z`, as pydantic writes them)."""
    return Response(
        orjson.dumps(data, option=orjson.OPT_UTC_Z),
        status_code=status_code,
        media_type="application/json",
    )


async def get_job(job_id: uuid.UUID, owner: ApiKey | None = None) -> Job:
    """The job if `owner` may see it: another key's job is "not found", never "forbidden"."""
    job = await repo.get_owned(job_id, owner_id(owner))
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


async def cancel_job(job_id: uuid.UUID, outbox: Outbox, owner: ApiKey | None = None) -> Job:
    """Cancel an unfinished job at once; a running prediction is canceled upstream after."""
    moved = await Lifecycle(outbox).finish(
        job_id,
        JobStatus.CANCELED,
        "canceled by the client",
        owner=owner_id(owner),
        stop_upstream=True,
    )
    if moved is None:
        current = await get_job(job_id, owner)
        raise ConflictError(f"job {job_id} is already {current.status}", status=current.status)
    return moved.job


_SUMMARY = (
    "id",
    "status",
    "result_key",
    "created_at",
    "updated_at",
    "retry_count",
    "prompt",
    "model",
    "error",
    "outputs",  # for the first one's thumbnail (a few short records)
)


async def list_jobs(owner: ApiKey | None, query: JobQuery) -> tuple[list[Job], str | None]:
    """One page of the caller's jobs, newest first, and the cursor of the next page."""
    jobs = owned(Job, owner)
    if query.status:
        jobs = jobs.filter(status=query.status)
    if query.model:
        jobs = jobs.filter(model=query.model)
    if query.created_after:
        jobs = jobs.filter(created_at__gt=query.created_after)
    if query.created_before:
        jobs = jobs.filter(created_at__lt=query.created_before)
    # Only what a summary shows: a page must not carry each job's logs and parameters.
    found = await paging.page(jobs, query.limit, _SUMMARY, after=query.cursor or None)
    return found.rows, paging.encode_cursor(found.rows[-1]) if found.older else None


async def thumbnail_of(job: Job, storage: Storage) -> str | None:
    """The URL of a completed job's first output's thumbnail, if it has one."""
    if job.status is not JobStatus.COMPLETED or not job.outputs:
        return None
    return await thumbnails.url_of(job.outputs[0], storage)


async def status_of(job: Job, storage: Storage) -> JobStatusResponse:
    return JobStatusResponse.model_validate(await status_response(job.id, job, storage))


async def detail_of(
    job: Job, storage: Storage, settings: Settings, redis: aioredis.Redis
) -> JobDetail:
    outputs = [
        OutputInfo(
            url=await storage.url_for(o["key"]),
            content_type=o["content_type"],
            size=o["size"],
            thumbnail_url=await thumbnails.url_of(o, storage),
        )
        for o in job.outputs
    ]
    output = values.shown(job.output, job.outputs, [o.url for o in outputs])
    duration = (job.completed_at - job.created_at).total_seconds() if job.completed_at else None
    position = paused = None
    if job.status is JobStatus.PENDING:
        try:
            queued = await queue_position(redis, job.id)
        except Exception as exc:  # unknown beats failing the whole detail
            log.warning("job %s: queue position unknown: %s", job.id, exc)
        else:
            position, paused = queued if queued is not None else (None, None)
    return JobDetail(
        **(await status_of(job, storage)).model_dump(),
        prompt=job.prompt,
        parameters=job.parameters,
        model=job.model,
        provider=job.provider,
        error=job.error,
        error_code=job.error_code,
        outputs=outputs,
        output=output,
        attempts=job.attempt,
        max_retries=settings.max_retries,
        prediction_id=job.prediction_id,
        started_at=job.started_at,
        completed_at=job.completed_at,
        next_attempt_at=job.next_attempt_at,
        duration_seconds=duration,
        progress=job.progress,
        queue_position=position,
        paused=paused,
        priority=job.priority,
        batch_id=job.batch_id,
        expires_at=job.expires_at,
        queue_deadline=job.queue_deadline,
        logs=job.logs,
        metrics=metrics_of(job),
    )
