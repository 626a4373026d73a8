"""HTTP endpoints of jobs. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from mediagen.jobs import service
from mediagen.jobs.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    JobDetail,
    JobStatusResponse,
)

router = APIRouter(tags=["jobs"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No job has this id."},
    422: {"model": ErrorResponse, "description": "The job id is not a UUID."},
}


@router.post(
    "/generate",
    status_code=201,
    response_model=GenerateResponse,
    summary="Create a media generation job",
    responses={
        400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8)."},
        413: {"model": ErrorResponse, "description": "The request body is too large."},
        422: {"model": ErrorResponse, "description": "The body is invalid; `errors` says where."},
        503: {"model": ErrorResponse, "description": "The database is unavailable."},
    },
)
async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
    """Accept a job and return its id at once. The job is durable once this answers 201, even
    if the broker is down (it is dispatched when the broker returns)."""
    job = await service.create_job(body, request.app.state.settings)
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
async def get_status(job_id: uuid.UUID, request: Request) -> JobStatusResponse:
    job = await service.get_job(job_id)
    return await service.status_of(job, request.app.state.storage)


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    responses=_NOT_FOUND,
    summary="Get a job's full details",
)
async def get_job(job_id: uuid.UUID, request: Request) -> JobDetail:
    job = await service.get_job(job_id)
    return await service.detail_of(job, request.app.state.storage, request.app.state.settings)
