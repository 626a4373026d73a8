"""HTTP endpoints of jobs. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from mediagen.jobs import service
from mediagen.jobs.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    JobDetail,
    JobList,
    JobQuery,
    JobStatusResponse,
    JobSummary,
)
from mediagen.keys.auth import caller
from mediagen.keys.models import ApiKey

router = APIRouter(tags=["jobs"])
Caller = Annotated[ApiKey | None, Depends(caller)]

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A valid API key is required."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"model": ErrorResponse, "description": "No job of yours has this id."},
    422: {"model": ErrorResponse, "description": "The job id is not a UUID."},
}


@router.post(
    "/generate",
    status_code=201,
    response_model=GenerateResponse,
    summary="Create a media generation job",
    responses={
        **_AUTH,
        400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8)."},
        413: {"model": ErrorResponse, "description": "The request body is too large."},
        422: {"model": ErrorResponse, "description": "The body is invalid; `errors` says where."},
        503: {"model": ErrorResponse, "description": "The database is unavailable."},
    },
)
async def generate(body: GenerateRequest, request: Request, owner: Caller) -> GenerateResponse:
    """Accept a job and return its id at once. The job is durable once this answers 201, even
    if the broker is down (it is dispatched when the broker returns)."""
    job = await service.create_job(body, request.app.state.settings, owner)
    return GenerateResponse(
        job_id=job.id,
        status=job.status,
        message=f"Job created successfully. Use job ID {job.id} to check status.",
    )


@router.get(
    "/status/{job_id}",
    response_model=JobStatusResponse,
    responses=_NOT_FOUND,
    summary="Get a job's status",
)
async def get_status(job_id: uuid.UUID, request: Request, owner: Caller) -> JobStatusResponse:
    job = await service.get_job(job_id, owner)
    return await service.status_of(job, request.app.state.storage)


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    responses=_NOT_FOUND,
    summary="Get a job's full details",
)
async def get_job(job_id: uuid.UUID, request: Request, owner: Caller) -> JobDetail:
    job = await service.get_job(job_id, owner)
    return await service.detail_of(job, request.app.state.storage, request.app.state.settings)


@router.get(
    "/jobs",
    response_model=JobList,
    summary="List your jobs, newest first",
    responses={**_AUTH, 422: {"model": ErrorResponse, "description": "Bad filter."}},
)
async def list_jobs(
    query: Annotated[JobQuery, Query()], request: Request, owner: Caller
) -> JobList:
    """Cursor pagination: follow `next` until it is null."""
    jobs, cursor = await service.list_jobs(owner, query)
    storage = request.app.state.storage
    data = [
        JobSummary(
            **(await service.status_of(job, storage)).model_dump(),
            prompt=job.prompt,
            model=job.model,
            error=job.error,
        )
        for job in jobs
    ]
    next_url = None
    if cursor:
        params = {**query.model_dump(exclude_none=True, mode="json"), "cursor": cursor}
        next_url = str(request.url.include_query_params(**params))
    return JobList(data=data, next=next_url)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobStatusResponse,
    summary="Cancel a job",
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorResponse, "description": "The job already finished."},
    },
)
async def cancel_job(job_id: uuid.UUID, request: Request, owner: Caller) -> JobStatusResponse:
    """A pending or retrying job is canceled at once; a processing one too, and its prediction
    is canceled upstream. A finished job answers 409 with its state."""
    job = await service.cancel_job(job_id, owner)
    return await service.status_of(job, request.app.state.storage)
