"""The API side of jobs: accept a job durably, then dispatch it; read jobs back for clients.

One place writes the new row (a single INSERT, committed on its own) and only then publishes the
task, so a worker never sees a job id before its row exists. If the broker is down the job is
still accepted: its `dispatched_at` stays empty and the sweeper dispatches it later.
"""

from __future__ import annotations

import asyncio
import uuid

from mediagen.config import Settings
from mediagen.errors import NotFoundError
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import send
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Next
from mediagen.jobs.schemas import GenerateRequest, JobDetail, JobStatusResponse, OutputInfo
from mediagen.storage.base import Storage


async def create_job(request: GenerateRequest, settings: Settings) -> Job:
    job = await Job.create(
        id=uuid.uuid4(),
        prompt=request.prompt,
        parameters=request.parameters.model_dump(exclude_none=True),
        model=request.model,
        provider=settings.provider_name,
    )
    if await asyncio.to_thread(send, Next("start", str(job.id))):
        await repo.mark_dispatched([job.id])
    return job


async def get_job(job_id: uuid.UUID) -> Job:
    job = await repo.get(job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


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
    )
