"""What Cog servers send us: prediction webhooks (`POST /api/v1/webhooks/cog/{id}/{token}`) and,
for servers started with `--upload-url`, their file outputs (`PUT /api/v1/uploads/cog/...`).

**Webhooks.** Cog signs nothing, so the URL the provider gave the prediction carries a token,
HMAC-SHA256 of the prediction id under the deployment's key (`mediagen.providers.cog`). It is
checked, in constant time, before a byte of the body is read (a forged one: 401), and is good
for that prediction only (a body about another prediction: 401). A webhook for an attempt that
no longer owns its job (finished, canceled, retried as a new attempt) is acknowledged and
ignored. A progress webhook records the tail of the logs in Redis, and the chunks a streaming
model has yielded so far (Cog sends the output list as it grows, one webhook per chunk, not
always in order: the worker keeps the longest), without a look at the job (the record of an
attempt that is over is read by nobody); for the attempt running now, the terminal one frees
the prediction's Cog slot at once (the queue's next job starts meanwhile), and has its
file outputs staged in storage (data: URIs decoded as they are written, checked against
DOWNLOAD_MAX_BYTES, the media types downloads allow and their bytes; our own upload Locations
taken as they are; more than MAX_OUTPUTS_PER_JOB outputs fail the job before anything is
staged) and the rest of its output, the value with each file's place (`mediagen.jobs.values`,
at most MAX_OUTPUT_VALUE_BYTES), is recorded in Redis (the first one wins), and sends the job's
poll step at once: the worker finishes the job from the record (`CogProvider.get`). A Redis or
storage failure answers 503, which Cog retries (a terminal webhook, about 12 times over some
7 minutes); one never delivered is what the model's deadline is for.

**Uploads.** `--upload-url {PUBLIC_BASE_URL}/api/v1/uploads/cog/{COG_UPLOAD_TOKEN}/` makes the
server PUT each file output to `<that URL><file name>` with `X-Prediction-ID`, before the
terminal webhook; it puts the `Location` we answer into the prediction's output. The URL's
token says the upload comes from one of our servers; `X-Prediction-ID` must be the id the
prediction's own server was given, which carries that prediction's upload token
(`ids.given_id`): the shared token alone uploads nothing (401). The upload must come from a
running attempt's prediction, have a media type downloads allow, start with the bytes of that
type (415 otherwise: HTML sent as image/png is refused) and fit DOWNLOAD_MAX_BYTES; it is
streamed into a staged object of that prediction. What is staged and never used (the job
ended first, the webhook never came) is swept (`mediagen.providers.cog.staging`).

Both paths skip the API's buffered body limit (`mediagen.limits.body`, `streamed`): their routes
authenticate first and read the body with their own cap.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel
from redis.exceptions import RedisError

from mediagen.broker import Outbox
from mediagen.config import Settings
from mediagen.errors import (
    AuthenticationError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentProviderError,
    ServiceUnavailableError,
    StorageError,
    UnsupportedMediaTypeError,
)
from mediagen.files.sniff import check_declared, head_of
from mediagen.jobs import joblogs, values
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import poll_task
from mediagen.jobs.models import Job
from mediagen.jobs.outputs import check_count
from mediagen.jobs.schemas import ErrorResponse
from mediagen.jobs.states import JobStatus
from mediagen.providers.base import finished
from mediagen.providers.cog import provider as cog
from mediagen.providers.cog.capacity import CogCapacity
from mediagen.providers.cog.ids import (
    cog_id_of,
    parse_cog_id,
    token_matches,
    uploading,
    webhook_key,
)
from mediagen.providers.cog.outputs import (
    STAGED,
    STAGED_NAME,
    UPLOADED,
    DataUri,
    file_outputs,
    is_file,
    media_of,
    staged_key,
)
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])

WEBHOOKS = "/webhooks/cog/"
UPLOADS = "/uploads/cog/"
WEBHOOK_SLACK = 4 * 1024 * 1024  # logs, metrics and JSON around the outputs
DATA_OUTPUTS = 4  # data: URI outputs one webhook may carry at DOWNLOAD_MAX_BYTES each
RECORD_TTL_MARGIN = 24 * 3600
ID_PATTERN = r"^mg-[0-9a-f]{32}-[1-9][0-9]{0,8}$"  # cog_id
MAC_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # webhook_token


class WebhookAck(BaseModel):
    status: str


def webhook_max_bytes(settings: Settings) -> int:
    """The largest webhook body: DATA_OUTPUTS data: URIs of DOWNLOAD_MAX_BYTES each (base64
    is 4/3 of the bytes) and room for the rest."""
    return DATA_OUTPUTS * ((settings.download_max_bytes + 2) // 3 * 4) + WEBHOOK_SLACK


def streamed_limits(settings: Settings, prefix: str) -> dict[str, int]:
    """The paths whose bodies the API must not buffer, with the most each may announce."""
    return {
        prefix + WEBHOOKS: webhook_max_bytes(settings),
        prefix + UPLOADS: settings.download_max_bytes,
    }


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request's body as it arrives, never more than `limit` bytes."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        if chunk:
            yield chunk


async def _running(prediction: str) -> Job | None:
    """The job when `prediction` is the Cog prediction of the attempt that owns it right now;
    None when it is stale (or was never one of ours)."""
    parsed = parse_cog_id(prediction)
    if parsed is None:
        return None
    job = await repo.get(parsed[0])
    if (
        job is None
        or job.provider != "cog"
        or job.status is not JobStatus.PROCESSING
        or job.attempt != parsed[1]
    ):
        return None
    return job


# --- webhooks ---------------------------------------------------------------------------------


@router.post(
    WEBHOOKS + "{prediction_id}/{token}",
    response_model=WebhookAck,
    summary="Receive a Cog server's prediction webhook",
    responses={
        401: {
            "model": ErrorResponse,
            "description": "Invalid token, or one for another prediction.",
        },
        404: {"model": ErrorResponse, "description": "Not a webhook URL mediagen gives."},
        413: {"model": ErrorResponse, "description": "Larger than the outputs allowed."},
        422: {"model": ErrorResponse, "description": "Not a prediction id and token."},
        503: {
            "model": ErrorResponse,
            "description": "Redis or storage unavailable: send it again.",
        },
    },
)
async def cog_webhook(
    request: Request,
    prediction_id: Annotated[str, Path(pattern=ID_PATTERN, description="The Cog prediction id.")],
    token: Annotated[str, Path(pattern=MAC_PATTERN, description="That prediction's token.")],
) -> WebhookAck:
    """The URL is the one mediagen gave the prediction (it carries a token of that prediction
    only). Answers 200 for stale and duplicate webhooks, so Cog stops sending them."""
    settings: Settings = request.app.state.settings
    key = await webhook_key(settings)
    if not token_matches(key, prediction_id, token):
        raise AuthenticationError("webhook rejected: invalid token")
    body = b"".join([chunk async for chunk in _body(request, webhook_max_bytes(settings))])
    try:
        payload = (
            await asyncio.to_thread(orjson.loads, body)
            if len(body) > 1 << 20
            else (orjson.loads(body))
        )
    except orjson.JSONDecodeError as exc:
        raise AuthenticationError("webhook rejected: the body is not JSON") from exc
    given = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(given, str) or cog_id_of(given) != prediction_id:
        raise AuthenticationError("webhook rejected: its token is for another prediction")
    try:
        outcome = await _accept(prediction_id, payload, request)
    except RedisError as exc:
        raise ServiceUnavailableError(f"webhook not recorded: {exc}", retry_after=5) from exc
    except StorageError as exc:
        raise ServiceUnavailableError(f"outputs not stored: {exc.message}", retry_after=5) from exc
    log.info("cog webhook for %s (%s): %s", prediction_id, payload.get("status"), outcome)
    return WebhookAck(status=outcome)


async def _accept(prediction: str, payload: dict[str, Any], request: Request) -> str:
    settings: Settings = request.app.state.settings
    storage: Storage = request.app.state.storage
    redis: aioredis.Redis = request.app.state.redis
    status = payload.get("status")
    ttl = int(settings.job_timeout) + RECORD_TTL_MARGIN
    if not finished(status):
        # No look at the job: a streaming model sends one per chunk, and the record of an
        # attempt that is over is read by nobody (it expires).
        live = {"status": "processing", **_logs(payload, settings), **_streamed(payload, settings)}
        await redis.set(cog.LIVE + prediction, orjson.dumps(live), ex=ttl)
        return "noted"
    running = await _running(prediction)
    if running is None:  # its uploads will never be used
        await _discard(storage, prediction, file_outputs(payload.get("output")))
        return "ignored"
    capacity: CogCapacity | None = request.app.state.cog_capacity
    if capacity is not None:
        error = payload.get("error")
        if status == "failed" and cog.worker_crashed(error if isinstance(error, str) else None):
            await capacity.worker_crashed(running, prediction)  # the server is going away
        # The server's slot is free now: the next job in the queue starts while this one's
        # outputs are stored (a release by the worker, after that, would leave the server idle
        # for a poll step and the finish; the worker's own release is then a no-op).
        await capacity.release(running)
    if await redis.exists(cog.DONE + prediction):
        return "duplicate"
    record, fresh = await _terminal_record(prediction, payload, settings, storage)
    try:
        recorded = await redis.set(cog.DONE + prediction, orjson.dumps(record), nx=True, ex=ttl)
    except RedisError:  # Cog sends it again: what was decoded now would never be used
        await _discard(storage, prediction, fresh)
        raise
    if not recorded:  # (uploads stay: the record that won names the same ones)
        await _discard(storage, prediction, fresh)
        return "duplicate"
    if await _running(prediction) is None:
        # The attempt ended meanwhile: a regular poll of the worker read the record (the job
        # ended in this attempt), or its deadline passed or the job was canceled while the
        # outputs were staged. Only a completion moved the staged outputs; whatever else
        # happened, no worker will read them, so nothing they name may stay in storage.
        ended = await _ended_in(prediction)
        if ended is not JobStatus.COMPLETED:
            await _discard(storage, prediction, record["outputs"])
        return "ignored" if ended is None else "recorded"
    if not (running.prediction_id or "").startswith(prediction + "."):
        # So fast that the worker has not recorded the prediction yet: its first poll, right
        # after it does, finds the record (a poll now would look at the job's previous one).
        return "recorded"
    outbox: Outbox = request.app.state.outbox
    if not await outbox.send(poll_task(running.id, running.attempt)):
        return "recorded"  # the job's next regular poll finds it
    return "dispatched"


async def _ended_in(prediction: str) -> JobStatus | None:
    """The job's final status when it ended in the attempt `prediction` belongs to."""
    parsed = parse_cog_id(prediction)
    job = await repo.get(parsed[0]) if parsed else None
    if job is None or parsed is None or job.attempt != parsed[1]:
        return None
    return job.status if job.status in (JobStatus.COMPLETED, JobStatus.FAILED) else None


async def _terminal_record(
    prediction: str, payload: dict[str, Any], settings: Settings, storage: Storage
) -> tuple[dict[str, Any], list[str]]:
    """What the worker needs of a finished prediction, its file outputs staged in storage
    (`outputs`, each with its place in the output value: `places`, and the value: `output`),
    and which staged objects were made now (decoded data: URIs; uploads were staged before).
    An output that breaks the limits turns a success into a failure saying which and why."""
    status = str(payload.get("status"))
    record: dict[str, Any] = {
        "status": status,
        "error": payload.get("error") if isinstance(payload.get("error"), str) else None,
        **_logs(payload, settings),
        "predict_time": _predict_time(payload),
        "outputs": [],
    }
    shaped, files = values.split(payload.get("output"), is_file)
    outputs = [ref for _, ref in files]
    if status != "succeeded":
        await _discard(storage, prediction, outputs)
        return record, []
    staged: list[str] = []
    fresh: list[str] = []
    try:
        values.check(shaped, settings.max_output_value_bytes)
        check_count(len(outputs), settings.max_outputs_per_job)
        for index, value in enumerate(outputs):
            ref = await _stage(prediction, index, value, settings, storage)
            staged.append(ref)
            if value.startswith("data:"):
                fresh.append(ref)
    except PermanentProviderError as exc:  # the job fails: none of its outputs will be used
        await _discard(storage, prediction, [*outputs, *fresh])
        return {**record, "status": "failed", "error": exc.message}, []
    except BaseException:  # answered 503: Cog sends it again, uploads and all
        await _discard(storage, prediction, fresh)
        raise
    places = [list(at) for at, _ in files]
    return {**record, "outputs": staged, "places": places, "output": shaped}, fresh


def _streamed(payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What a running prediction streamed so far (`values.streamed`): its chunks, or only
    their size when that is past MAX_OUTPUT_VALUE_BYTES (the job fails: `CogProvider.get`)."""
    chunks = values.streamed(payload.get("output"), is_file)
    if not chunks:
        return {}
    size = values.size_of(chunks)
    if size > settings.max_output_value_bytes:
        return {"output_bytes": size}
    return {"output": chunks}


def _logs(payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The newest JOB_LOGS_MAX_BYTES of the prediction's logs (no job keeps more), and how
    many bytes came before them (so the job's log stays whole where it is kept)."""
    logs = payload.get("logs")
    omitted, text = joblogs.tail(logs if isinstance(logs, str) else "", settings.job_logs_max_bytes)
    return {"logs": text, "logs_omitted": omitted}


def _predict_time(payload: dict[str, Any]) -> float | None:
    metrics = payload.get("metrics")
    value = metrics.get("predict_time") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


async def _stage(
    prediction: str, index: int, value: str, settings: Settings, storage: Storage
) -> str:
    """One output as the record keeps it: a staged object (`staged:<name>`) or a URL."""
    if value.startswith(UPLOADED):
        name = value.removeprefix(UPLOADED)
        if not STAGED_NAME.match(name):
            raise PermanentProviderError(f"output {index}: not an upload of ours: {value[:80]!r}")
        return STAGED + name
    if not value.startswith("data:"):
        return value  # http(s): downloaded by the worker, with the download rules
    try:
        uri = DataUri.parse(value, settings.download_max_bytes)
    except PermanentProviderError as exc:
        raise PermanentProviderError(f"output {index}: {exc.message}") from None
    name = f"{uuid.uuid4().hex}.{uri.ext}"
    try:
        await storage.save(
            staged_key(storage, prediction, name),
            await _checked(uri.chunks(), uri.ext),
            uri.content_type,
        )
    except (PermanentProviderError, UnsupportedMediaTypeError) as exc:
        raise PermanentProviderError(f"output {index}: {exc.message}") from None
    return STAGED + name


async def _checked(chunks: AsyncIterator[bytes], ext: str) -> AsyncIterator[bytes]:
    """`chunks`, once their first bytes showed they are what `ext` declares (415 otherwise:
    nothing is stored)."""
    head, whole = await head_of(chunks)
    check_declared(head, ext)
    return whole


async def _discard(storage: Storage, prediction: str, outputs: list[Any]) -> None:
    """Delete the staged objects of `prediction` that `outputs` names (they will not be used)."""
    for value in outputs:
        if not isinstance(value, str):
            continue
        name = value.removeprefix(STAGED).removeprefix(UPLOADED)
        if name != value and STAGED_NAME.match(name):
            try:
                await storage.delete(staged_key(storage, prediction, name))
            except StorageError as exc:
                log.warning("staged output %s of %s not deleted: %s", name, prediction, exc)


# --- uploads ----------------------------------------------------------------------------------


@router.put(
    UPLOADS + "{token}/{filename}",
    status_code=201,
    response_class=Response,
    summary="Receive a file output from a Cog server started with --upload-url",
    responses={
        201: {"description": "Stored; `Location` names it for the prediction's output."},
        401: {
            "model": ErrorResponse,
            "description": "Invalid upload token, or X-Prediction-ID is not the id the "
            "prediction's server was given.",
        },
        404: {
            "model": ErrorResponse,
            "description": "Uploads are off (COG_UPLOAD_TOKEN "
            "unset), or no running prediction has this X-Prediction-ID.",
        },
        413: {"model": ErrorResponse, "description": "Larger than DOWNLOAD_MAX_BYTES."},
        415: {
            "model": ErrorResponse,
            "description": "Not a media type outputs may have, or bytes of another type.",
        },
        422: {"model": ErrorResponse, "description": "Invalid path."},
        503: {"model": ErrorResponse, "description": "Storage unavailable: send it again."},
    },
)
async def cog_upload(token: str, filename: str, request: Request) -> Response:
    settings: Settings = request.app.state.settings
    expected = settings.cog_upload_token.get_secret_value()
    if not expected:
        raise NotFoundError("uploads are not configured (COG_UPLOAD_TOKEN is unset)")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthenticationError("upload rejected: invalid token")
    key = await webhook_key(settings)
    prediction = uploading(key, request.headers.get("x-prediction-id", ""))
    if prediction is None:
        raise AuthenticationError(
            "upload rejected: X-Prediction-ID is not the id of a prediction mediagen gave"
        )
    if await _running(prediction) is None:
        raise NotFoundError("no running prediction has this X-Prediction-ID")
    try:
        content_type, ext = media_of(request.headers.get("content-type"), filename)
    except PermanentProviderError as exc:
        raise UnsupportedMediaTypeError(exc.message) from None
    body = await _checked(_body(request, settings.download_max_bytes), ext)
    name = f"{uuid.uuid4().hex}.{ext}"
    storage: Storage = request.app.state.storage
    where = staged_key(storage, prediction, name)
    try:
        await storage.save(where, body, content_type)
    except StorageError as exc:
        raise ServiceUnavailableError(f"upload not stored: {exc.message}", retry_after=5) from exc
    log.info("cog upload %s for %s stored", name, prediction)
    return Response(status_code=201, headers={"Location": UPLOADED + name})
