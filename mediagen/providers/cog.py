"""Cog provider: models on your own GPUs, served by Cog's HTTP server (`cog` + `coglet`), behind
the same non-blocking interface as Replicate.

Cog keeps nothing for us: no polling (`GET /predictions/{id}` is 405), no queue (409 when its
slots are busy), unsigned webhooks, nothing kept when a webhook is missed. So:

- **create** PUTs `/predictions/{id}` with `Prefer: respond-async` on one of the model's
  endpoints. The id derives from the job and attempt (`mg-<job hex>-<attempt>`): Cog answers a
  repeated PUT of a running id with that prediction's state and starts nothing. The webhook URL
  carries a token, HMAC-SHA256 of that id under the deployment's secret (COG_WEBHOOK_SECRET, or
  one kept in Postgres): good for that prediction only, checked in constant time.
- **The webhook route** (`mediagen.jobs.cog_webhooks`) checks the token, stores the outputs as
  *staged* objects (data: URIs decoded as they are written; `--upload-url` uploads arrive
  there already), and records the prediction in Redis; the terminal one also sends the job's
  poll step at once. **get** reads that record: the terminal state, else the latest logs (for
  progress), and looks again every POLL_INTERVAL (a Redis read; Cog jobs in flight are bounded
  by the GPUs' slots).
- **The deadline**: a prediction with no completion `deadline` seconds (per model, models
  file) after it was created will never report (its webhook was missed while the API was
  down, or its server died with it): `get` raises `PredictionLostError` and the job runs a new
  attempt, a new prediction, counted like any retry. That is the cost of a missed webhook.
- **fetch** streams a staged object to the job's output key and then deletes it; an http(s)
  output (a server uploading somewhere else) is downloaded like Replicate's, with the same
  limits.
- **cancel** POSTs `/predictions/{id}/cancel` to the server that holds the prediction.

What `jobs.prediction_id` keeps is the Cog id plus where and when it was made,
`mg-<job hex>-<attempt>.<endpoint key>.<created ms>` (`Handle`), so the deadline and a cancel
need nothing but the job's row.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mediagen.config import Settings, get_settings
from mediagen.errors import (
    NoCapacityError,
    OutboundError,
    PermanentProviderError,
    PredictionLostError,
    RetryableProviderError,
    StorageError,
)
from mediagen.outbound import Outbound, Policy
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)
from mediagen.providers.replicate import (
    _CANONICAL,
    MAX_REDIRECTS,
    MEDIA_TYPES,
    _check,
    _checked_headers,
    _provider_chunks,
    _provider_error,
)

if TYPE_CHECKING:
    from mediagen.catalog import Catalog, Endpoint
    from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

API_MAX_BYTES = 1024 * 1024  # a Cog answer to a create or cancel (the input echoed, logs)
SCHEMA_MAX_BYTES = 2 * 1024 * 1024
SCHEMA_TTL = 300.0  # how long a server's input names are trusted
SCHEMA_RETRY = 30.0  # ... and its failure to give them
DEFAULT_DEADLINE = 600.0
# Which webhooks Cog sends: not "output", whose intermediate copy repeats the whole outputs.
WEBHOOK_EVENTS = ["start", "logs", "completed"]
TERMINAL = {
    "succeeded": PredictionStatus.SUCCEEDED,
    "failed": PredictionStatus.FAILED,
    "canceled": PredictionStatus.CANCELED,
}
LOGS_KEPT = 8192  # the tail of a prediction's logs kept for progress
CHUNK = 1024 * 1024

# Redis: the terminal prediction, and the latest logs of a running one (see cog_webhooks).
DONE = "mediagen:cog:done:"
LIVE = "mediagen:cog:live:"
# What outputs look like in a record: a staged object of the prediction, or a URL.
STAGED = "staged:"
# The Location the upload route answers (Cog puts it in the prediction's output as it is).
UPLOADED = "mediagen-upload:"
# What `get` hands `fetch` for a staged object: `mediagen-staged:<cog id>/<name>`.
_STAGED_URL = "mediagen-staged:"

_COG_ID = re.compile(r"^mg-([0-9a-f]{32})-([1-9][0-9]{0,8})$")
_HANDLE = re.compile(r"^(mg-[0-9a-f]{32}-[1-9][0-9]{0,8})\.([0-9a-f]{10})\.([0-9]{1,16})$")
STAGED_NAME = re.compile(r"^[0-9a-f]{32}\.([a-z0-9]{2,5})$")
_KEY_ROW = "cog-webhook-secret"
_secrets: dict[str, bytes] = {}  # per configured value ("" : the one kept in Postgres)


# --- ids, tokens, staged objects ------------------------------------------------------------


def cog_id(job_id: str | uuid.UUID, attempt: int) -> str:
    """The id a job's attempt has on the Cog server: the same for every PUT of that attempt."""
    return f"mg-{uuid.UUID(str(job_id)).hex}-{attempt}"


def parse_cog_id(value: str) -> tuple[uuid.UUID, int] | None:
    """(job id, attempt) of a Cog id we made; None for anything else."""
    match = _COG_ID.match(value)
    return None if match is None else (uuid.UUID(match.group(1)), int(match.group(2)))


def endpoint_key(url: str) -> str:
    """A short, stable name of an endpoint (its URL stays out of the job's public fields)."""
    return hashlib.sha256(url.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Handle:
    """What `jobs.prediction_id` holds for a Cog prediction."""

    cog_id: str
    endpoint: str  # endpoint_key of the server that took it
    created_ms: int

    def __str__(self) -> str:
        return f"{self.cog_id}.{self.endpoint}.{self.created_ms}"

    @classmethod
    def parse(cls, value: str) -> Handle | None:
        match = _HANDLE.match(value)
        if match is None:
            return None
        return cls(match.group(1), match.group(2), int(match.group(3)))


async def webhook_key(settings: Settings) -> bytes:
    """The deployment's key for webhook tokens: COG_WEBHOOK_SECRET, else one made at random the
    first time and kept in Postgres (`service_secrets`), so API and workers agree."""
    configured = settings.cog_webhook_secret
    if configured:
        return configured.encode()
    cached = _secrets.get("")
    if cached is None:
        from mediagen.storage.signing import ServiceSecret

        await ServiceSecret.get_or_create(
            name=_KEY_ROW, defaults={"value": secrets.token_urlsafe(32)}
        )
        stored = await ServiceSecret.get(name=_KEY_ROW)
        cached = _secrets[""] = stored.value.encode()
    return cached


def webhook_token(key: bytes, prediction: str) -> str:
    """The token of one prediction's webhook URL (43 url-safe characters)."""
    digest = hmac.new(key, b"cog-webhook\n" + prediction.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(key: bytes, prediction: str, token: str) -> bool:
    """Whether `token` is the token of `prediction`, in constant time."""
    return hmac.compare_digest(token.encode(), webhook_token(key, prediction).encode())


def webhook_url(settings: Settings, key: bytes, prediction: str) -> str:
    base = settings.public_base_url.rstrip("/")
    return f"{base}/api/v1/webhooks/cog/{prediction}/{webhook_token(key, prediction)}"


def staged_key(storage: Storage, prediction: str, name: str) -> str:
    """Where a staged output of `prediction` lives in `storage` (under the backend's own
    prefix; never a job's output key)."""
    stem, _, ext = name.partition(".")
    return storage.key_for(f"cog-staging/{prediction}/{stem}", 0, ext)


def media_of(content_type: str | None, name: str = "") -> tuple[str, str]:
    """(content type, extension) an output may be stored as, from its declared type or, for
    octet-stream, its name's extension; PermanentProviderError for anything else."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in MEDIA_TYPES:
        ext = MEDIA_TYPES[media]
        return _CANONICAL[ext], ext
    if media in ("", "application/octet-stream", "binary/octet-stream"):
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        suffix = {"jpeg": "jpg"}.get(suffix, suffix)
        if suffix in _CANONICAL:
            return _CANONICAL[suffix], suffix
    raise PermanentProviderError(f"output has unsupported content type {media or 'none'!r}")


@dataclass(frozen=True)
class DataUri:
    """A base64 `data:` URI, checked before a byte is decoded."""

    content_type: str
    ext: str
    payload: str
    size: int  # decoded

    @classmethod
    def parse(cls, uri: str, max_bytes: int) -> DataUri:
        head, comma, payload = uri.partition(",")
        if not comma or not head.startswith("data:"):
            raise PermanentProviderError("output is not a data: URI")
        media, *params = head[5:].split(";")
        if "base64" not in (p.strip().lower() for p in params):
            raise PermanentProviderError("data: URI output is not base64")
        content_type, ext = media_of(media)
        padding = len(payload) - len(payload.rstrip("="))
        size = len(payload) * 3 // 4 - padding
        if len(payload) % 4:
            raise PermanentProviderError("data: URI output is not valid base64")
        if size > max_bytes:
            raise PermanentProviderError(f"output exceeds {max_bytes} bytes ({size} declared)")
        return cls(content_type, ext, payload, size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded bytes, a megabyte at a time (decoding never holds the loop long)."""
        step = CHUNK // 3 * 4
        for start in range(0, len(self.payload), step):
            try:
                yield base64.b64decode(self.payload[start : start + step], validate=True)
            except binascii.Error as exc:
                raise PermanentProviderError("data: URI output is not valid base64") from exc
            await asyncio.sleep(0)


def file_outputs(value: Any) -> list[str]:
    """The file outputs of a prediction, in order: strings that are data: URIs, our upload
    Locations or http(s) URLs, in the shapes Cog returns (one, a list, a dict of them).
    Anything else (text, numbers) is not a file and is left out."""
    if isinstance(value, str):
        return [value] if value.startswith(("data:", UPLOADED, "https://", "http://")) else []
    if isinstance(value, list | tuple):
        return [item for each in value for item in file_outputs(each)]
    if isinstance(value, dict):
        return [item for each in value.values() for item in file_outputs(each)]
    return []


def logs_tail(logs: Any) -> str:
    return logs[-LOGS_KEPT:] if isinstance(logs, str) else ""


# --- the provider ---------------------------------------------------------------------------


class CogProvider:
    name = "cog"

    def __init__(
        self,
        settings: Settings | None = None,
        outbound: Outbound | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._owned = outbound is None
        self.outbound = outbound or Outbound()
        self._catalog = catalog
        # The endpoints are the operator's own servers (often on a private network): not pinned.
        self._api = Policy(deadline=self.settings.cog_timeout, max_bytes=API_MAX_BYTES, pin=False)
        self._schema = Policy(
            deadline=self.settings.cog_timeout, max_bytes=SCHEMA_MAX_BYTES, pin=False
        )
        self._downloads = Policy(
            deadline=self.settings.download_timeout,
            max_bytes=self.settings.download_max_bytes,
            allow_private=self.settings.download_allow_private,
            redirects=MAX_REDIRECTS,
        )
        self._inputs: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._turn = 0
        self._redis: aioredis.Redis | None = None
        self._staging: Storage | None = None

    # --- plumbing --------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from mediagen.catalog import get_catalog

            self._catalog = get_catalog()
        return self._catalog

    def _records(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.from_url(
                self.settings.redis_url or "redis://localhost:6379/0",
                socket_connect_timeout=2,
                socket_timeout=5,
                client_name="mediagen-cog",
            )
        return self._redis

    def _storage(self) -> Storage:
        if self._staging is None:
            from mediagen.storage import create_storage

            self._staging = create_storage(self.settings)
        return self._staging

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._staging is not None:
            await self._staging.close()
            self._staging = None
        if self._owned:
            await self.outbound.close()

    def _endpoints(self) -> Iterable[Endpoint]:
        for route in self.catalog.models():
            if route.provider == "cog":
                yield from route.endpoints

    def _order(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Every endpoint once, starting with the next in turn (spreads jobs across them)."""
        self._turn += 1
        start = self._turn % len(endpoints)
        return [*endpoints[start:], *endpoints[:start]]

    async def _input_names(self, endpoint: Endpoint) -> frozenset[str] | None:
        """The inputs the server's model declares (its `/openapi.json`), or None when it gives
        no schema (a server run from source, without `cog build`): then everything is sent."""
        now = time.monotonic()
        cached = self._inputs.get(endpoint.url)
        if cached is not None and cached[0] > now:
            return cached[1]
        names: frozenset[str] | None = None
        try:
            reply = await self.outbound.call("GET", f"{endpoint.url}/openapi.json", self._schema)
            if reply.status == 200:
                schema = orjson.loads(reply.body)
                properties = schema["components"]["schemas"]["Input"]["properties"]
                names = frozenset(str(name) for name in properties)
        except (OutboundError, orjson.JSONDecodeError, KeyError, TypeError):
            names = None
        self._inputs[endpoint.url] = (now + (SCHEMA_TTL if names else SCHEMA_RETRY), names)
        return names

    # --- Provider --------------------------------------------------------------------------
    async def create(self, request: GenerationRequest) -> Prediction:
        route = request.route
        model = route.name if route is not None else (request.model or "?")
        endpoints = tuple(route.endpoints) if route is not None else ()
        if not endpoints:
            raise PermanentProviderError(f"model {model!r} has no Cog endpoints (MODELS_FILE)")
        if not self.settings.public_base_url:
            raise PermanentProviderError(
                "Cog models need PUBLIC_BASE_URL: a Cog server reports a prediction's end only "
                "by webhook"
            )
        prediction = cog_id(request.job_id, request.attempt)
        key = await webhook_key(self.settings)
        given = {**request.parameters, "prompt": request.prompt}
        problems: list[str] = []
        busy = 0
        for endpoint in self._order(endpoints):
            accepted = await self._input_names(endpoint)
            body = {
                "input": given
                if accepted is None
                else {k: v for k, v in given.items() if k in accepted},
                "webhook": webhook_url(self.settings, key, prediction),
                "webhook_events_filter": WEBHOOK_EVENTS,
            }
            what = f"cog create on {endpoint.url}"
            try:
                reply = await self.outbound.call(
                    "PUT",
                    f"{endpoint.url}/predictions/{quote(prediction, safe='')}",
                    self._api,
                    json=body,
                    headers={"Prefer": "respond-async"},
                )
            except OutboundError as exc:
                if _never_sent(exc):  # refused or unreachable: this one took nothing
                    problems.append(f"{endpoint.url}: {exc.message}")
                    continue
                # It may have started it: never the same id on a second server.
                raise _provider_error(exc, f"{what}: {exc.message}") from exc.__cause__ or exc
            if reply.status in (409, 503):  # every slot busy / setup not finished yet
                busy += 1
                problems.append(f"{endpoint.url}: HTTP {reply.status}")
                continue
            _check(reply, what)
            created = Handle(prediction, endpoint_key(endpoint.url), time.time_ns() // 1_000_000)
            deadline = route.deadline if route is not None else DEFAULT_DEADLINE
            return Prediction(
                str(created),
                PredictionStatus.STARTING,
                poll_after=min(self.settings.poll_interval, deadline),
            )
        detail = "; ".join(problems)
        if busy:
            raise NoCapacityError(
                f"no free slot on the Cog servers of {model}: {detail}",
                retry_after=self.settings.poll_interval,
            )
        raise RetryableProviderError(f"no Cog server of {model} answered: {detail}")

    async def get(self, prediction_id: str, request: GenerationRequest) -> Prediction:
        handle = Handle.parse(prediction_id)
        if handle is None:
            raise PermanentProviderError(f"not a Cog prediction: {prediction_id!r}")
        try:
            done, live = await self._records().mget(DONE + handle.cog_id, LIVE + handle.cog_id)
        except RedisError as exc:
            raise RetryableProviderError(
                f"cog: cannot read the prediction's record: {exc}"
            ) from exc
        if done is not None:
            try:
                record = orjson.loads(done)
            except orjson.JSONDecodeError as exc:
                raise PermanentProviderError("cog: the prediction's record is unreadable") from exc
            return self._terminal(prediction_id, handle, record)
        route = request.route
        deadline = DEFAULT_DEADLINE
        if route is not None and route.provider == "cog":
            deadline = route.deadline
        left = handle.created_ms / 1000 + deadline - time.time()
        if left <= 0:
            raise PredictionLostError(
                f"no completion from the Cog server within the {deadline:g}s deadline (its "
                "webhook was missed, or the server lost the prediction): running it again"
            )
        try:
            logs = orjson.loads(live).get("logs") if live is not None else None
        except (orjson.JSONDecodeError, AttributeError):
            logs = None  # progress only: none is shown
        return Prediction(
            prediction_id,
            PredictionStatus.PROCESSING,
            logs=logs if isinstance(logs, str) else None,
            poll_after=min(self.settings.poll_interval, left),
        )

    def _terminal(self, prediction_id: str, handle: Handle, record: dict[str, Any]) -> Prediction:
        status = TERMINAL.get(str(record.get("status")), PredictionStatus.FAILED)
        logs = record.get("logs") if isinstance(record.get("logs"), str) else None
        if status is PredictionStatus.SUCCEEDED:
            outputs = []
            for ref in record.get("outputs") or []:
                if isinstance(ref, str) and ref.startswith(STAGED):
                    name = ref.removeprefix(STAGED)
                    outputs.append(Output(url=f"{_STAGED_URL}{handle.cog_id}/{name}"))
                elif isinstance(ref, str):
                    outputs.append(Output(url=ref))
            return Prediction(prediction_id, status, outputs, logs=logs)
        error = str(record.get("error") or f"prediction {record.get('status')}")
        if "Failed to upload output" in error and "status 5" in error:
            # Our upload endpoint failed for a moment (storage): not the model's fault.
            raise PredictionLostError(f"the Cog server could not upload its output: {error}")
        return Prediction(prediction_id, status, error=error, logs=logs)

    async def cancel(self, prediction_id: str) -> None:
        handle = Handle.parse(prediction_id)
        if handle is None:
            return  # not a prediction of ours: nothing to stop
        endpoint = next(
            (e for e in self._endpoints() if endpoint_key(e.url) == handle.endpoint), None
        )
        if endpoint is None:
            log.warning("cancel of %s: its Cog server is no longer in the models file", handle)
            return
        what = f"cog cancel {handle.cog_id} on {endpoint.url}"
        url = f"{endpoint.url}/predictions/{quote(handle.cog_id, safe='')}/cancel"
        try:
            reply = await self.outbound.call("POST", url, self._api)
        except OutboundError as exc:
            raise _provider_error(exc, f"{what}: {exc.message}") from exc.__cause__ or exc
        if reply.status != 404:  # 404: finished, or never there (a restarted server)
            _check(reply, what)

    @asynccontextmanager
    async def fetch(self, output: Output) -> AsyncIterator[Fetched]:
        url = output.url or ""
        if url.startswith(_STAGED_URL):
            async with self._fetch_staged(url.removeprefix(_STAGED_URL)) as fetched:
                yield fetched
            return
        if not url.startswith(("https://", "http://")):
            raise PermanentProviderError("Cog output is neither staged nor an http(s) URL")
        try:
            async with self.outbound.open("GET", url, self._downloads) as stream:
                content_type, ext = _checked_headers(stream, self.settings)
                yield Fetched(_provider_chunks(stream), content_type, ext)
        except OutboundError as exc:
            raise _provider_error(exc, f"output {exc.message}") from exc.__cause__ or exc

    @asynccontextmanager
    async def _fetch_staged(self, where: str) -> AsyncIterator[Fetched]:
        """A staged output of a prediction, read from storage; deleted once it was stored
        (if the job's output could not be written, it stays for the next try)."""
        prediction, _, name = where.partition("/")
        match = STAGED_NAME.match(name)
        if parse_cog_id(prediction) is None or match is None:
            raise PermanentProviderError(f"invalid staged output {where!r}")
        content_type, ext = media_of(None, name)
        storage = self._storage()
        key = staged_key(storage, prediction, name)
        if not await storage.exists(key):
            # Stored and removed by a finish that died before completing the job: the record
            # cannot be finished again, so it goes and the job runs a new attempt.
            await self._forget(prediction)
            raise PredictionLostError(f"the staged output {name} of {prediction} is gone")
        yield Fetched(_staged_chunks(storage, key), content_type, ext)
        try:
            await storage.delete(key)
        except StorageError as exc:
            log.warning("staged output %s not deleted: %s", key, exc)

    async def _forget(self, prediction: str) -> None:
        try:
            await self._records().delete(DONE + prediction)
        except RedisError as exc:
            raise RetryableProviderError(
                f"cog: cannot drop the prediction's record: {exc}"
            ) from exc


def _never_sent(exc: OutboundError) -> bool:
    """True when the request cannot have reached the server (refused, unreachable): another
    server may take the prediction without any risk of running it twice."""
    return exc.message.startswith("cannot connect")


async def _staged_chunks(storage: Storage, key: str) -> AsyncIterator[bytes]:
    """A staged object's bytes: read from the file a megabyte at a time for local storage;
    other backends hand it over whole (at most DOWNLOAD_MAX_BYTES)."""
    from mediagen.storage.local import LocalStorage

    if not isinstance(storage, LocalStorage):
        yield await storage.read(key)
        return
    try:
        handle = await asyncio.to_thread(storage.path_for(key).open, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {key}: {exc}") from exc
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
