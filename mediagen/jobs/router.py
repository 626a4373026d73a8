"""HTTP endpoints of jobs. Thin: validate, call the service, shape the answer.

Submit and status answer with JSON written straight from the row (`service.json_response`)
rather than through a response model: the models document them in the OpenAPI schema, and the
schemathesis suite checks every answer against it. Their common case is served by
`mediagen.jobs.fastpath` before FastAPI's machinery; these routes are the reference it defers to.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel

from mediagen import idempotency
from mediagen.base_url import request_url
from mediagen.errors import NotFoundError
from mediagen.jobs import deletion, retention, service
from mediagen.jobs import repository as repo
from mediagen.jobs.payloads import status_response
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
from mediagen.keys.owners import owner_id

router = APIRouter(tags=["jobs"])
Caller = Annotated[ApiKey | None, Depends(caller)]


async def reader(request: Request, owner: Caller) -> ApiKey | None:
    """The caller of a read, within RATE_LIMIT_READS_PER_MINUTE (429 past it)."""
    request.app.state.read_limiter.check(owner)
    return owner


Reader = Annotated[ApiKey | None, Depends(reader)]

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A valid API key is required."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"model": ErrorResponse, "description": "No job of yours has this id."},
    422: {"model": ErrorResponse, "description": "The job id is not a UUID."},
}
_READ_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorResponse, "description": "Read rate limit; see Retry-After."},
}
READ: dict[int | str, dict[str, Any]] = {**_NOT_FOUND, **_READ_LIMITED}

# The `Idempotency-Key` header of a creating endpoint (/generate, /batches).
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe submission: the same key and body within 24 h returns "
        "the first response and creates nothing.",
    ),
]


async def created(
    owner: ApiKey | None,
    key: str | None,
    body: BaseModel,
    create: Callable[[uuid.UUID], Awaitable[dict[str, Any]]],
    recall: idempotency.Recall,
    endpoint: str = "",
) -> Response:
    """The 201 of a creating request: `create(id)`'s answer, or, for a key seen before with the
    same body, the first answer again (`Idempotent-Replayed: true`) and nothing created.
    `recall(id)`: the answer of what was created under `id`, if it exists (`idempotency`)."""
    if key is None:
        return service.json_response(await create(uuid.uuid4()), 201)
    body_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    claimed = await idempotency.claim(owner, key, body_hash, recall, endpoint)
    if claimed.replay is not None:
        response = service.json_response(claimed.replay, 201)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        answer = await create(claimed.resource_id)
    except BaseException:
        await idempotency.release(owner, key, claimed, endpoint)
        raise
    await idempotency.complete(owner, key, claimed, answer, endpoint)
    return service.json_response(answer, 201)


@router.post(
    "/generate",
    status_code=201,
    response_model=GenerateResponse,
    summary="Create a media generation job",
    responses={
        **_AUTH,
        400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8)."},
        403: {
            "model": ErrorResponse,
            "description": "A priority above the key's ceiling (`priority_not_allowed`).",
        },
        409: {"model": ErrorResponse, "description": "Same Idempotency-Key still in progress."},
        413: {"model": ErrorResponse, "description": "The request body is too large."},
        429: {"model": ErrorResponse, "description": "Rate or in-flight limit; see Retry-After."},
        422: {
            "model": ErrorResponse,
            "description": "The body is invalid, or its parameters are not what the model "
            "takes (`validation_error`; `errors` says where), an input file is not usable "
            "(`invalid_input`), a parameter is a URL that is not an input file "
            "(`input_url_refused`), or the Idempotency-Key was used with another body.",
        },
        503: {"model": ErrorResponse, "description": "The database is unavailable."},
    },
)
async def generate(
    body: GenerateRequest,
    request: Request,
    owner: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Accept a job and return its id at once. The job is durable once this answers 201, even
    if the broker is down (it is dispatched when the broker returns)."""
    state = request.app.state
    state.rate_limiter.check(owner)

    async def create(job_id: uuid.UUID) -> dict[str, Any]:
        await service.create_job(
            body,
            state.settings,
            state.outbox,
            owner,
            state.catalog,
            schemas=state.input_schemas,
            job_id=job_id,
        )
        return service.accepted_body(job_id)

    async def recall(job_id: uuid.UUID) -> dict[str, Any] | None:
        exists = await repo.status_row(job_id, owner_id(owner)) is not None
        return service.accepted_body(job_id) if exists else None

    return await created(owner, idempotency_key, body, create, recall)


@router.get(
    "/status/{job_id}",
    response_model=JobStatusResponse,
    responses=READ,
    summary="Get a job's status",
)
async def get_status(job_id: uuid.UUID, request: Request, owner: Reader) -> Response:
    row = await repo.status_row(job_id, owner_id(owner))
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    body = await status_response(job_id, row, request.app.state.storage)
    return service.json_response(body)


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    responses=READ,
    summary="Get a job's full details",
)
async def get_job(job_id: uuid.UUID, request: Request, owner: Reader) -> JobDetail:
    job = await service.get_job(job_id, owner)
    state = request.app.state
    return await service.detail_of(job, state.storage, state.settings, state.redis)


@router.get(
    "/jobs",
    response_model=JobList,
    summary="List your jobs, newest first",
    responses={
        400: {"model": ErrorResponse, "description": "`next` would name a Host not served."},
        **_AUTH,
        **_READ_LIMITED,
        422: {"model": ErrorResponse, "description": "Bad filter."},
    },
)
async def list_jobs(
    query: Annotated[JobQuery, Query()], request: Request, owner: Reader
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
            thumbnail_url=await service.thumbnail_of(job, storage),
        )
        for job in jobs
    ]
    next_url = None
    if cursor:
        params = {**query.model_dump(exclude_none=True, mode="json"), "cursor": cursor}
        next_url = request_url(request, **params)
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
    job = await service.cancel_job(job_id, request.app.state.outbox, owner)
    return await service.status_of(job, request.app.state.storage)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a job and everything it left",
    responses={
        **_NOT_FOUND,
        204: {
            "description": "Deleted: the job, its outputs, the input files made for it (not "
            "uploaded ones) and its webhook log."
        },
        503: {"model": ErrorResponse, "description": "Storage unavailable: delete it again."},
    },
)
async def delete_job(job_id: uuid.UUID, request: Request, owner: Caller) -> Response:
    """An unfinished job is canceled first (its prediction is stopped upstream). Its outputs
    stop answering at once: their URLs answer 410 Gone."""
    state = request.app.state
    await deletion.delete_job(job_id, owner, state.storage, state.redis, state.outbox)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/outputs/{index}",
    status_code=307,
    response_class=Response,
    summary="Fetch one of a job's outputs",
    responses={
        **READ,
        307: {"description": "Redirect to the output (a signed or presigned URL)."},
        404: {"model": ErrorResponse, "description": "No job of yours, or no such output."},
        410: {"model": ErrorResponse, "description": "Deleted when its retention ended."},
    },
)
async def get_output(
    job_id: uuid.UUID, index: Annotated[int, Path(ge=0)], request: Request, owner: Reader
) -> Response:
    """A stable address of an output (`index` from 0), for as long as the job exists: it
    redirects to a fresh URL of the object, and answers 410 once retention deleted it."""
    url = await retention.output_url(job_id, index, owner_id(owner), request.app.state.storage)
    return Response(status_code=307, headers={"Location": url})
