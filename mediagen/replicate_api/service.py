"""What the `/v1` routes do: a prediction is a mediagen job (same id, same `create_job`, same
worker), read back in Replicate's shape (`predictions.prediction_of`)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.responses import Response

from mediagen.base_url import service_root
from mediagen.catalog import BUILTIN_MODEL, Catalog, ModelNotAllowedError, ModelRoute
from mediagen.config import Settings
from mediagen.errors import ConflictError, InvalidInputError, NotFoundError
from mediagen.errors_http import describe
from mediagen.jobs import repository as repo
from mediagen.jobs import service as jobs
from mediagen.jobs.models import Job
from mediagen.jobs.schemas import GenerateRequest, InputsRequest
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owned, owner_id
from mediagen.replicate_api import pages, waiting
from mediagen.replicate_api.models import model_of, version_of
from mediagen.replicate_api.predictions import (
    PREFIX,
    as_json,
    file_urls,
    model_name,
    prediction_of,
    version_id,
)
from mediagen.replicate_api.schemas import (
    ModelPredictionRequest,
    ModelVersion,
    PredictionPage,
    PredictionRequest,
    ReplicateModel,
    ReplicatePrediction,
    WebhookSecret,
)
from mediagen.replicate_api.webhooks import SURFACE

PAGE_SIZE = 50
# Replicate's webhook events as mediagen's: `output` and `logs` arrive as progress updates.
EVENTS = {"start": "start", "output": "progress", "logs": "progress", "completed": "completed"}
# What a listing reads of each job: everything a prediction shows but its logs.
_LISTED = (
    "id",
    "status",
    "prompt",
    "parameters",
    "model",
    "provider",
    "outputs",
    "output",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    "metrics",
)


def parse_id(prediction_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(prediction_id)
    except ValueError:
        raise NotFoundError(f"prediction {prediction_id} not found") from None


def _names(catalog: Catalog) -> list[str]:
    """The model names that a bare version id may stand for."""
    names = [route.name for route in catalog.models() if "*" not in route.name]
    return [*names, BUILTIN_MODEL]


def resolve(catalog: Catalog, ref: str) -> tuple[str, ModelRoute]:
    """The model a request names (`owner/name`, `owner/name:version`, a version id) and its
    route; a version this service showed for a name stands for that name. 404 if not run here."""
    model = ref
    name, _, version = ref.partition(":")
    if version and version == version_id(name):
        model = name
    elif not version and "/" not in ref:
        model = next((n for n in _names(catalog) if version_id(n) == ref), ref)
    try:
        return model, catalog.route(model)
    except ModelNotAllowedError:
        raise NotFoundError(f"model {model_name(ref)} not found") from None


def _where(loc: tuple[int | str, ...]) -> str:
    """A GenerateRequest error location as the Replicate body has it (`input.<name>`)."""
    if loc[:1] == ("prompt",):
        loc = ("input", "prompt")
    elif loc[:1] == ("parameters",):
        loc = ("input", *loc[1:])
    return ".".join(str(p) for p in loc)


def job_request(
    model: str, route: ModelRoute, body: ModelPredictionRequest | PredictionRequest
) -> GenerateRequest:
    """The job a prediction request asks for: `input.prompt` its prompt, the rest its
    parameters; 422 (problem details) for what a job cannot take. A Cog model takes the inputs
    it declares, with or without a prompt (checked against its schema at submit,
    `mediagen.jobs.admission`); the built-in generator and Replicate models need `prompt`."""
    inputs = dict(body.input)
    data: dict[str, Any] = {"prompt": inputs.pop("prompt", None), "parameters": inputs}
    data["model"] = model
    if body.webhook is not None:
        data["webhook"] = body.webhook
    if body.webhook_events_filter is not None:
        data["webhook_events_filter"] = list(
            dict.fromkeys(EVENTS[e] for e in body.webhook_events_filter)
        )
    if data["prompt"] is None:
        data.pop("prompt")
    kind = InputsRequest if route.provider == "cog" else GenerateRequest
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(describe(exc.errors(), _where)) from None


async def _prediction(state: State, job: Job, base: str, **options: Any) -> ReplicatePrediction:
    return await prediction_of(job, state.storage, base, state.catalog.default.name, **options)


async def create(
    request: Request,
    owner: ApiKey | None,
    ref: str,
    body: ModelPredictionRequest | PredictionRequest,
    prefer: str | None,
) -> Response:
    """Accept the job (201 once it is durable); with `Prefer: wait`, answer when it finished
    or the wait is over, whichever comes first (the API waits, no worker does), or at once
    when the caller has no wait place left (`waiting`)."""
    state = request.app.state
    state.rate_limiter.check(owner)
    wait = waiting.parse_prefer(prefer)
    model, route = resolve(state.catalog, ref)
    generate = job_request(model, route, body)
    base = service_root(request)
    job_id = await jobs.create_job(
        generate,
        state.settings,
        state.outbox,
        owner,
        state.catalog,
        surface=(SURFACE, base),
        schemas=state.input_schemas,
        file_urls=(file_urls(base),),
    )
    headers: dict[str, str] = {}
    if wait is not None:
        job, waited = await waiting.until_finished(state, owner, job_id, wait)
        if waited:
            headers["Preference-Applied"] = f"wait={wait}"
    else:
        job = await repo.get(job_id)
    if job is None:  # deleted meanwhile
        raise NotFoundError(f"prediction {job_id} not found")
    prediction = await _prediction(state, job, base)
    if wait is not None and not job.status.is_terminal:
        # As Replicate's blocking API: a prediction still running when the wait ends is
        # `starting`, which tells the clients' `run()` to poll it.
        prediction.status = "starting"
    response = jobs.json_response(as_json(prediction), 201)
    response.headers.update(headers)
    return response


async def get(request: Request, owner: ApiKey | None, job_id: uuid.UUID) -> ReplicatePrediction:
    job = await repo.get_owned(job_id, owner_id(owner))
    if job is None:
        raise NotFoundError(f"prediction {job_id} not found")
    return await _prediction(request.app.state, job, service_root(request))


async def cancel(request: Request, owner: ApiKey | None, job_id: uuid.UUID) -> ReplicatePrediction:
    """Cancel it if it has not finished; a finished one is answered as it is (as Replicate)."""
    state, base = request.app.state, service_root(request)  # a refused Host cancels nothing
    try:
        job = await jobs.cancel_job(job_id, state.outbox, owner)
    except ConflictError:
        job = await jobs.get_job(job_id, owner)
    except NotFoundError:
        raise NotFoundError(f"prediction {job_id} not found") from None
    return await _prediction(state, job, base)


async def list_predictions(
    request: Request, owner: ApiKey | None, cursor: str | None
) -> PredictionPage:
    """One page of the caller's jobs, newest first (as `/api/v1/jobs`, `pages`)."""
    state, base = request.app.state, service_root(request)
    found = await pages.listed(
        owned(Job, owner), PAGE_SIZE, _LISTED, cursor, f"{base}{PREFIX}/predictions"
    )
    results = [await _prediction(state, job, base, with_logs=False) for job in found.rows]
    return PredictionPage(next=found.next, previous=found.previous, results=results)


async def get_model(request: Request, owner: ApiKey | None, name: str) -> ReplicateModel:
    state = request.app.state
    model, route = resolve(state.catalog, name)
    return await model_of(state, model, route, service_root(request))


async def get_version(
    request: Request, owner: ApiKey | None, name: str, version: str
) -> ModelVersion:
    state = request.app.state
    model, route = resolve(state.catalog, name)
    if version != version_id(model):
        raise NotFoundError(f"version {version} of {name} not found")
    return await version_of(state, model, route)


def webhook_secret(request: Request, owner: ApiKey | None) -> WebhookSecret:
    """The secret that signs the caller's webhooks: its key's, or WEBHOOK_SECRET without one."""
    settings: Settings = request.app.state.settings
    secret = owner.webhook_secret if owner else settings.webhook_secret.get_secret_value()
    if not secret:
        raise NotFoundError("no webhook signing secret is set for this caller")
    return WebhookSecret(key=secret)
