"""HTTP endpoints of batches. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from mediagen.batches import service
from mediagen.batches.schemas import BatchDetail, BatchRequest
from mediagen.jobs.router import Caller, IdempotencyKey, Reader, created
from mediagen.jobs.schemas import ErrorResponse

router = APIRouter(tags=["batches"])

# Idempotency-Key records of batches live apart from those of single jobs: a key reused on the
# other endpoint can never replay the other's answer.
IDEMPOTENCY_SCOPE = "batches:"

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A valid API key is required."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"model": ErrorResponse, "description": "No batch of yours has this id."},
    422: {"model": ErrorResponse, "description": "The batch id is not a UUID."},
}


@router.post(
    "/batches",
    status_code=201,
    response_model=BatchDetail,
    summary="Create many jobs at once, all or none",
    responses={
        **_AUTH,
        400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8)."},
        403: {
            "model": ErrorResponse,
            "description": "An entry asks for a priority above "
            "the key's ceiling (`detail` names it: `jobs[i]`).",
        },
        409: {"model": ErrorResponse, "description": "Same Idempotency-Key still in progress."},
        413: {"model": ErrorResponse, "description": "The request body is too large."},
        429: {
            "model": ErrorResponse,
            "description": "Rate limit, or the batch's jobs do not all fit within the "
            "in-flight limit; see Retry-After. Nothing was created.",
        },
        422: {
            "model": ErrorResponse,
            "description": "An entry is invalid (`errors` or `detail` names it: `jobs.i` / "
            "`jobs[i]`; nothing was created), or the Idempotency-Key was used with another body.",
        },
        503: {"model": ErrorResponse, "description": "The database is unavailable."},
    },
)
async def create_batch(
    body: BatchRequest,
    request: Request,
    owner: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Accept every job of the batch, or none of them. The jobs are durable once this answers
    201 and run as single jobs do; follow them with `GET /api/v1/batches/{batch_id}`."""
    state = request.app.state
    for _ in body.jobs:  # a batch counts as many submissions as it has jobs
        state.rate_limiter.check(owner)

    async def create(batch_id: uuid.UUID) -> dict[str, Any]:
        batch = await service.create_batch(
            body,
            state.settings,
            state.outbox,
            owner,
            state.catalog,
            schemas=state.input_schemas,
            batch_id=batch_id,
        )
        return batch.model_dump(mode="json")

    async def recall(batch_id: uuid.UUID) -> dict[str, Any] | None:
        batch = await service.find_batch(batch_id, owner)
        return batch.model_dump(mode="json") if batch else None

    return await created(owner, idempotency_key, body, create, recall, IDEMPOTENCY_SCOPE)


@router.get(
    "/batches/{batch_id}",
    response_model=BatchDetail,
    summary="Get a batch: its state, counts by job state and its jobs",
    responses={
        **_NOT_FOUND,
        429: {"model": ErrorResponse, "description": "Read rate limit; see Retry-After."},
    },
)
async def get_batch(batch_id: uuid.UUID, owner: Reader) -> BatchDetail:
    return await service.get_batch(batch_id, owner)


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchDetail,
    summary="Cancel every unfinished job of a batch",
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorResponse, "description": "The batch already completed."},
    },
)
async def cancel_batch(batch_id: uuid.UUID, request: Request, owner: Caller) -> BatchDetail:
    """Each unfinished job is canceled as `POST /api/v1/jobs/{job_id}/cancel` does; jobs that
    already finished keep their outcome. Canceling a canceled batch again changes nothing."""
    return await service.cancel_batch(batch_id, request.app.state.outbox, owner)
