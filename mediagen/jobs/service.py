"""The API side of jobs: accept a job durably, then dispatch it; read jobs back for clients.

One place writes the new row (a single INSERT, committed on its own) and only then publishes the
task, so a worker never sees a job id before its row exists. If the broker is down the job is
still accepted: its `dispatched_at` stays empty and the sweeper dispatches it later.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from mediagen.config import Settings
from mediagen.errors import ConflictError, NotFoundError
from mediagen.jobs import events
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import send, send_cancel
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Next
from mediagen.jobs.progress import queue_position
from mediagen.jobs.schemas import (
    GenerateRequest,
    GenerateResponse,
    JobDetail,
    JobQuery,
    JobStatusResponse,
    OutputInfo,
)
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.notify import service as notify
from mediagen.storage.base import Storage


async def create_job(
    request: GenerateRequest, settings: Settings, owner: ApiKey | None = None
) -> Job:
    if request.webhook is not None:
        await notify.check_webhook(request.webhook, settings, owner)
    async with in_transaction():
        job = await Job.create(
            id=uuid.uuid4(),
            api_key=owner,
            prompt=request.prompt,
            parameters=request.parameters.model_dump(exclude_none=True),
            model=request.model,
            provider=settings.provider_name,
        )
        if request.webhook is not None:
            await notify.record(job.id, request.webhook, list(request.webhook_events_filter))
    await events.job_created(job)
    if await asyncio.to_thread(send, Next("start", str(job.id))):
        await repo.mark_dispatched([job.id])
    return job


def accepted(job: Job) -> GenerateResponse:
    return GenerateResponse(
        job_id=job.id,
        status=job.status,
        message=f"Job created successfully. Use job ID {job.id} to check status.",
    )


async def get_job(job_id: uuid.UUID, owner: ApiKey | None = None) -> Job:
    """The job if `owner` may see it: another key's job is "not found", never "forbidden"."""
    job = await Job.get_or_none(id=job_id, api_key_id=owner.id if owner else None)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


async def cancel_job(job_id: uuid.UUID, owner: ApiKey | None = None) -> Job:
    """Cancel an unfinished job at once; a running prediction is canceled upstream after."""
    job = await get_job(job_id, owner)
    if not await repo.transition(
        job.id,
        JobStatus.CANCELED,
        error="canceled by the client",
        completed_at=repo.now(),
        lease_expires_at=None,
        next_attempt_at=None,
    ):
        current = await get_job(job_id, owner)
        raise ConflictError(f"job {job_id} is already {current.status}", status=current.status)
    if job.prediction_id and job.status is JobStatus.PROCESSING:
        await asyncio.to_thread(send_cancel, job.prediction_id)
    return await get_job(job_id, owner)


async def list_jobs(owner: ApiKey | None, query: JobQuery) -> tuple[list[Job], str | None]:
    """One page of the caller's jobs, newest first, and the cursor of the next page."""
    jobs = Job.filter(api_key_id=owner.id if owner else None)
    if query.status:
        jobs = jobs.filter(status=query.status)
    if query.model:
        jobs = jobs.filter(model=query.model)
    if query.created_after:
        jobs = jobs.filter(created_at__gt=query.created_after)
    if query.created_before:
        jobs = jobs.filter(created_at__lt=query.created_before)
    if query.cursor:
        created_at, last_id = decode_cursor(query.cursor)
        jobs = jobs.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=last_id))
    page = await jobs.order_by("-created_at", "-id").limit(query.limit + 1)
    more = len(page) > query.limit
    page = page[: query.limit]
    return page, encode_cursor(page[-1]) if more else None


def encode_cursor(job: Job) -> str:
    """`{created_at in µs since the epoch}~{id hex}`: the last job of a page. Any string of that
    shape is a valid position, so the schema can state exactly which cursors are accepted."""
    micros = int(job.created_at.timestamp()) * 1_000_000 + job.created_at.microsecond
    return f"{micros}~{job.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    micros, _, job_id = cursor.partition("~")
    created_at = datetime.fromtimestamp(int(micros) // 1_000_000, UTC).replace(
        microsecond=int(micros) % 1_000_000
    )
    return created_at, uuid.UUID(hex=job_id)


async def status_of(job: Job, storage: Storage) -> JobStatusResponse:
    return JobStatusResponse(
        job_id=job.id,
        status=job.status,
        result_url=await storage.url_for(job.result_key) if job.result_key else None,
        created_at=job.created_at,
        updated_at=job.updated_at,
        retry_count=job.retry_count,
    )


async def detail_of(job: Job, storage: Storage, settings: Settings) -> JobDetail:
    outputs = [
        OutputInfo(
            url=await storage.url_for(o["key"]), content_type=o["content_type"], size=o["size"]
        )
        for o in job.outputs
    ]
    duration = (job.completed_at - job.created_at).total_seconds() if job.completed_at else None
    return JobDetail(
        **(await status_of(job, storage)).model_dump(),
        prompt=job.prompt,
        parameters=job.parameters,
        model=job.model,
        provider=job.provider,
        error=job.error,
        outputs=outputs,
        attempts=job.attempt,
        max_retries=settings.max_retries,
        prediction_id=job.prediction_id,
        started_at=job.started_at,
        completed_at=job.completed_at,
        next_attempt_at=job.next_attempt_at,
        duration_seconds=duration,
        progress=job.progress,
        queue_position=await queue_position(job),
    )
