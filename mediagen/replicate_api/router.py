"""Replicate's HTTP API at `/v1`, so the official `replicate` clients work against mediagen by
changing only their base URL. Thin: parse, call `service`, answer. `install` mounts it, with its
errors as problem+json for every path under `/v1` (`problems`, through `mediagen.errors_http`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from sse_starlette import EventSourceResponse

from mediagen import errors_http
from mediagen.errors import InvalidInputError
from mediagen.keys.auth import bearer
from mediagen.replicate_api import files, pages, problems, service, streaming, waiting
from mediagen.replicate_api.auth import Caller, Reader
from mediagen.replicate_api.predictions import PREFIX
from mediagen.replicate_api.schemas import (
    STREAM_EVENT_SCHEMA,
    ModelPredictionRequest,
    ModelVersion,
    PredictionPage,
    PredictionRequest,
    ReplicateModel,
    ReplicatePrediction,
    WebhookSecret,
)

router = APIRouter(tags=["replicate"], lifespan=waiting.lifespan)
FILES = PREFIX + files.PATH  # uploads: streamed, capped as they are read
Owner = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)]
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)]
Prefer = Annotated[
    str | None,
    Header(
        pattern=waiting.PREFER_PATTERN,
        description="`wait` or `wait=n`: hold the answer until the prediction finishes, at "
        "most n seconds (at most 60, the default). An answer that waited says "
        "`Preference-Applied`; past MAX_WAITS_PER_KEY waits at once it does not wait.",
    ),
]


@router.post(
    "/models/{owner}/{name}/predictions",
    status_code=201,
    response_model=ReplicatePrediction,
    summary="Create a prediction of a model",
    responses=problems.responses(400, 401, 404, 413, 422, 429, 503),
)
async def create_model_prediction(
    owner: Owner,
    name: Name,
    body: ModelPredictionRequest,
    request: Request,
    caller: Caller,
    prefer: Prefer = None,
) -> Response:
    """A mediagen job of the model `owner/name`; with `Prefer: wait` the answer waits for it."""
    return await service.create(request, caller, f"{owner}/{name}", body, prefer)


@router.post(
    "/predictions",
    status_code=201,
    response_model=ReplicatePrediction,
    summary="Create a prediction of a model version",
    responses=problems.responses(400, 401, 404, 413, 422, 429, 503),
)
async def create_prediction(
    body: PredictionRequest, request: Request, caller: Caller, prefer: Prefer = None
) -> Response:
    """`version` is `owner/name`, `owner/name:version` or a version id."""
    return await service.create(request, caller, body.version, body, prefer)


@router.get(
    "/predictions",
    response_model=PredictionPage,
    summary="List your predictions, newest first",
    responses=problems.responses(400, 401, 422, 429),
)
async def list_predictions(
    request: Request,
    caller: Reader,
    cursor: pages.Cursor = None,
) -> PredictionPage:
    """Every job of the key (whatever API made it), as predictions: follow `next` (older) or
    `previous` (newer)."""
    return await service.list_predictions(request, caller, cursor)


@router.get(
    "/predictions/{prediction_id}",
    response_model=ReplicatePrediction,
    summary="Get a prediction",
    responses=problems.responses(400, 401, 404, 422, 429),
)
async def get_prediction(
    prediction_id: str, request: Request, caller: Reader
) -> ReplicatePrediction:
    return await service.get(request, caller, _job_id(prediction_id))


@router.get(
    "/predictions/{prediction_id}/stream",
    response_class=EventSourceResponse,
    summary="Stream a prediction's logs and output (Server-Sent Events)",
    responses={
        200: {
            "description": "`logs`, then one `output` per output, `error` if it failed, and "
            '`done` (`{}` or `{"reason": "canceled"}`), after which the stream ends.',
            "content": {"text/event-stream": {"schema": STREAM_EVENT_SCHEMA}},
        },
        **problems.responses(400, 401, 404, 422, 429, 503),
    },
)
async def stream_prediction(
    prediction_id: str,
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
    expires: Annotated[int | None, Query(ge=0, description="From `urls.stream`.")] = None,
    sig: Annotated[str | None, Query(max_length=100, description="From `urls.stream`.")] = None,
) -> Response:
    """`urls.stream` of a prediction, as Replicate's clients' `stream()` reads it. Its signed
    URL needs no token (until MEDIA_URL_TTL); without the signature, the owner's token."""
    _exactly_as_signed(request)
    return await streaming.open_stream(request, _job_id(prediction_id))


def _exactly_as_signed(request: Request) -> None:
    """422 for a signature's parameters in another form than `urls.stream` gives them (the
    query parser would take `expires=1.0`, or the last of several `sig`, without a word)."""
    for name in ("expires", "sig"):
        values = request.query_params.getlist(name)
        if len(values) > 1 or (name == "expires" and values and not values[0].isdigit()):
            raise InvalidInputError(
                f"query parameter {name!r}: give it once, as `urls.stream` has it"
            )


@router.post(
    "/predictions/{prediction_id}/cancel",
    response_model=ReplicatePrediction,
    summary="Cancel a prediction",
    responses=problems.responses(400, 401, 404, 422, 429),
)
async def cancel_prediction(
    prediction_id: str, request: Request, caller: Caller
) -> ReplicatePrediction:
    """An unfinished prediction is canceled; a finished one is answered as it is."""
    return await service.cancel(request, caller, _job_id(prediction_id))


@router.get(
    "/models/{owner}/{name}",
    response_model=ReplicateModel,
    summary="Get a model",
    responses=problems.responses(400, 401, 404, 422, 429),
)
async def get_model(owner: Owner, name: Name, request: Request, caller: Reader) -> ReplicateModel:
    """A model this service runs, with its input schema where its provider has one."""
    return await service.get_model(request, caller, f"{owner}/{name}")


@router.get(
    "/models/{owner}/{name}/versions/{version_id}",
    response_model=ModelVersion,
    summary="Get a model version",
    responses=problems.responses(401, 404, 422, 429),
)
async def get_version(
    owner: Owner, name: Name, version_id: str, request: Request, caller: Reader
) -> ModelVersion:
    return await service.get_version(request, caller, f"{owner}/{name}", version_id)


@router.get(
    "/webhooks/default/secret",
    response_model=WebhookSecret,
    summary="Get the secret that signs your webhooks",
    responses=problems.responses(401, 404, 429),
)
async def webhook_secret(request: Request, caller: Reader) -> WebhookSecret:
    """The calling key's `whsec_` secret (WEBHOOK_SECRET for a keyless caller)."""
    return service.webhook_secret(request, caller)


def _job_id(prediction_id: str) -> uuid.UUID:
    """A prediction id is a job id; anything else names no prediction (404, as Replicate)."""
    return service.parse_id(prediction_id)


def install(app: FastAPI) -> None:
    """Serve Replicate's API at PREFIX, its errors (a 404 or 405 of any path under it too) as
    problem details."""
    app.include_router(router, prefix=PREFIX)
    app.include_router(files.router, prefix=PREFIX)
    errors_http.add_renderer(app, PREFIX, problems.render)
