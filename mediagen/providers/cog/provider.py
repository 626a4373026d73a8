"""Cog provider: models on your own GPUs, served by Cog's HTTP server (`cog` + `coglet`), behind
the same non-blocking interface as Replicate.

Cog keeps nothing for us: no polling (`GET /predictions/{id}` is 405), no queue (409 when its
slots are busy), unsigned webhooks, nothing kept when a webhook is missed. So (ids and tokens:
`ids`; outputs on their way to storage: `outputs`):

- **Capacity** is ours to keep (`mediagen.providers.cog.slots`): a job's start step takes a
  slot of one endpoint before anything is sent, or waits, `pending`, in its model's queue. So
  the pipeline hands `create` a route with that one endpoint. A 409 there is sent again after
  waits of milliseconds (the server still finishing the prediction it just reported done);
  one that lasts (the server is shared with someone else) raises `NoCapacityError`, a refused
  connection `EndpointDownError`: the job waits for a slot again, uncounted.
- **create** PUTs `/predictions/{id}` with `Prefer: respond-async` on the model's endpoint
  (the first of the route's that answers, rotating). Its `input` is exactly the job's inputs
  (input files as URLs or `data:` URIs), with the prompt only as the model's `prompt` input
  (`mediagen.catalog.schemas.model_inputs`, by the schema of the models file or the server).
  The id derives from the job and attempt (`mg-<job hex>-<attempt>`): Cog answers a
  repeated PUT of a running id with that prediction's state and starts nothing. The webhook
  URL carries a token, HMAC-SHA256 of that id under the deployment's secret
  (COG_WEBHOOK_SECRET, or one kept in Postgres): good for that prediction only, checked in
  constant time. The server knows the prediction by that id plus its upload token
  (`ids.given_id`), which its uploads send back.
- **The webhook route** (`mediagen.providers.cog.webhooks`) checks the token, stores the outputs as
  *staged* objects (data: URIs decoded as they are written; `--upload-url` uploads arrive
  there already), and records the prediction in Redis; the terminal one also sends the job's
  poll step at once. **get** reads that record: the terminal state (its files, and its output
  value with each file's place), else the latest logs (for progress) and the chunks a
  streaming model yielded so far, and looks again every POLL_INTERVAL (a Redis read; Cog jobs
  in flight are bounded by the GPUs' slots).
- **The deadline**: a prediction with no completion `deadline` seconds (per model, models
  file) after it was created will never report (its webhook was missed while the API was
  down, or its server died with it): `get` raises `PredictionLostError` and the job runs a new
  attempt, a new prediction, counted like any retry. That is the cost of a missed webhook.
  A completion saying the server's worker crashed (the server was stopped or killed) is
  handled the same way, at once, as are the jobs of a server that fails its health check.
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
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mediagen import redis_clients
from mediagen.catalog import Catalog, Endpoint, get_catalog
from mediagen.catalog.listing import InputSchemas
from mediagen.catalog.schemas import model_inputs
from mediagen.config import Settings, get_settings
from mediagen.errors import (
    EndpointDownError,
    NoCapacityError,
    OutboundError,
    PermanentProviderError,
    PredictionLostError,
    RetryableProviderError,
    StorageError,
)
from mediagen.jobs.values import too_large
from mediagen.outbound import Outbound, Policy, Reply
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)
from mediagen.providers.cog.ids import (
    Handle,
    cog_id,
    endpoint_key,
    given_id,
    parse_cog_id,
    webhook_key,
    webhook_url,
)
from mediagen.providers.cog.outputs import (
    STAGED,
    STAGED_NAME,
    media_of,
    staged_chunks,
    staged_key,
)
from mediagen.providers.downloads import (
    ANSWER_LOGGED,
    check_reply,
    checked_headers,
    download_policy,
    model_message,
    provider_chunks,
    provider_error,
)
from mediagen.storage import create_storage
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

# Waits before a PUT that met a 409 is sent again (`CogProvider._put`): about 0.6 s in all,
# then the server is busy for real (shared with someone else) and is set aside.
BUSY_WAITS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
API_MAX_BYTES = 1024 * 1024  # a Cog answer to a create or cancel (the input echoed, logs)
DEFAULT_DEADLINE = 600.0
# Which webhooks Cog sends: "output" for what a streaming model yields as it runs (Cog sends it
# for every output, files too: with inline data: URIs a file comes twice, `--upload-url` avoids).
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]

# Redis: the terminal prediction, and the latest logs of a running one (see `webhooks`).
DONE = "mediagen:cog:done:"
LIVE = "mediagen:cog:live:"
# What `get` hands `fetch` for a staged object: `mediagen-staged:<cog id>/<name>`.
_STAGED_URL = "mediagen-staged:"


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
        # The endpoints are the operator's own servers (often on a private network): not pinned,
        # and given the trace context if COG_TRACE_CONTEXT says they are traced too.
        traced = self.settings.cog_trace_context
        self._api = Policy(
            deadline=self.settings.cog_timeout,
            max_bytes=API_MAX_BYTES,
            pin=False,
            trace_context=traced,
        )
        self._downloads = download_policy(self.settings)
        self._schemas = InputSchemas(self.outbound)  # the models' input schemas, cached
        self._turn = 0
        self._redis: aioredis.Redis | None = None
        self._staging: Storage | None = None

    # --- plumbing --------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = get_catalog()
        return self._catalog

    def _records(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = redis_clients.async_client(self.settings, "mediagen-cog", timeout=5)
        return self._redis

    def _storage(self) -> Storage:
        if self._staging is None:
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

    def _order(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Every endpoint once, starting with the next in turn (spreads jobs across them)."""
        self._turn += 1
        start = self._turn % len(endpoints)
        return [*endpoints[start:], *endpoints[:start]]

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
        given = await request.provider_input(prompt=False)  # input files: URLs or data: URIs
        schema = await self._schemas.of(route) if route is not None else None
        inputs = model_inputs(schema, request.prompt, given)
        problems: list[str] = []  # public: each endpoint by its key (`endpoint_key`)
        urls: dict[str, str] = {}  # for the logs
        busy = 0
        for endpoint in self._order(endpoints):
            key_of = endpoint_key(endpoint.url)
            urls[key_of] = endpoint.url
            body = {
                "input": inputs,
                "webhook": webhook_url(self.settings, key, prediction),
                "webhook_events_filter": WEBHOOK_EVENTS,
            }
            what = f"cog create on endpoint {key_of}"
            url = f"{endpoint.url}/predictions/{quote(given_id(key, prediction), safe='')}"
            try:
                reply = await self._put(url, body, prediction)
            except OutboundError as exc:
                if _never_sent(exc):  # refused or unreachable: this one took nothing
                    problems.append(f"endpoint {key_of}: {exc.reason}")
                    continue
                # It may have started it: never the same id on a second server.
                raise provider_error(exc, f"{what}: {exc.reason}", url=endpoint.url) from (
                    exc.__cause__ or exc
                )
            if reply.status in (409, 503):  # every slot busy / setup not finished yet
                busy += 1
                problems.append(f"endpoint {key_of}: HTTP {reply.status}")
                continue
            check_reply(reply, what)
            created = Handle(prediction, key_of, time.time_ns() // 1_000_000)
            deadline = route.deadline if route is not None else DEFAULT_DEADLINE
            return Prediction(
                str(created),
                PredictionStatus.STARTING,
                poll_after=min(self.settings.poll_interval, deadline),
            )
        detail = "; ".join(problems)
        if busy:  # the job waits for a slot again (mediagen.providers.cog.slots)
            raise NoCapacityError(
                f"no free slot on the Cog servers of {model}: {detail}", urls=urls
            )
        raise EndpointDownError(f"no Cog server of {model} answered: {detail}", urls=urls)

    async def _put(self, url: str, body: dict[str, Any], prediction: str) -> Reply:
        """PUT the prediction; a 409 is tried again after short waits (BUSY_WAITS). The job
        holds a slot of this server, so a 409 mostly means the server still finishes the
        prediction it just reported done (it sends the terminal webhook a few milliseconds
        before its slot takes work): a wait of milliseconds, where setting the server aside
        costs seconds. Nothing was started by a 409, so the same PUT is safe again."""
        for wait in BUSY_WAITS:
            reply = await self._send(url, body)
            if reply.status != 409:
                return reply
            log.info(
                "Cog server busy (409); trying again",
                extra={"prediction": prediction, "retry_in_ms": round(wait * 1000)},
            )
            await asyncio.sleep(wait)
        return await self._send(url, body)

    async def _send(self, url: str, body: dict[str, Any]) -> Reply:
        return await self.outbound.call(
            "PUT", url, self._api, json=body, headers={"Prefer": "respond-async"}
        )

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
        parsed = parse_cog_id(handle.cog_id)
        if parsed is not None and parsed[1] != request.attempt:
            # An earlier attempt's prediction still running (a retry after its server went
            # down, say): its webhooks are refused now (they are not this attempt's), so it
            # can never report: never resumed.
            raise PredictionLostError(f"{handle.cog_id} belongs to an earlier attempt")
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
            seen = orjson.loads(live) if live is not None else {}
            logs, omitted = seen.get("logs"), seen.get("logs_omitted")
            chunks, over = seen.get("output"), seen.get("output_bytes")
        except (orjson.JSONDecodeError, AttributeError):
            logs = omitted = chunks = over = None  # nothing is shown until the next webhook
        if isinstance(over, int):  # the model streamed more than a job keeps: it is stopped
            raise too_large(over, self.settings.max_output_value_bytes)
        return Prediction(
            prediction_id,
            PredictionStatus.PROCESSING,
            logs=logs if isinstance(logs, str) else None,
            logs_omitted=omitted if isinstance(omitted, int) else 0,
            poll_after=min(self.settings.poll_interval, left),
            output=chunks if isinstance(chunks, list) else None,
        )

    def _terminal(self, prediction_id: str, handle: Handle, record: dict[str, Any]) -> Prediction:
        status = PredictionStatus.parse(record.get("status"))
        if status is None or not status.is_terminal:
            status = PredictionStatus.FAILED
        logs = record.get("logs") if isinstance(record.get("logs"), str) else None
        omitted = record.get("logs_omitted")
        seen: dict[str, Any] = {
            "logs": logs,
            "logs_omitted": omitted if isinstance(omitted, int) else 0,
            "predict_time": record.get("predict_time"),
        }
        if not isinstance(seen["predict_time"], int | float):
            seen["predict_time"] = None
        if status is PredictionStatus.SUCCEEDED:
            outputs = []
            places = record.get("places")
            for index, ref in enumerate(record.get("outputs") or []):
                # Its place in the output value (a record from before places: none).
                at = places[index] if isinstance(places, list) and index < len(places) else None
                place = tuple(at) if isinstance(at, list) else None
                if isinstance(ref, str) and ref.startswith(STAGED):
                    name = ref.removeprefix(STAGED)
                    outputs.append(Output(url=f"{_STAGED_URL}{handle.cog_id}/{name}", at=place))
                elif isinstance(ref, str):
                    outputs.append(Output(url=ref, at=place))
            return Prediction(prediction_id, status, outputs, output=record.get("output"), **seen)
        raw = record.get("error")
        if status is PredictionStatus.FAILED or raw:
            error = model_message(str(raw) if raw else None)  # the model's own, once
        else:
            error = f"prediction {record.get('status')}"
        if "Failed to upload output" in error and "status 5" in error:
            # Our upload endpoint failed for a moment (storage): not the model's fault. (Cog's
            # message names the upload URL: logged, not shown.)
            raise PredictionLostError(
                "the Cog server could not upload its output", answer=error[:ANSWER_LOGGED]
            )
        if worker_crashed(error):
            # Not this input's fault, so a new attempt, counted (MAX_RETRIES bounds a model
            # that crashes on it every time).
            raise PredictionLostError(
                "the Cog server lost the prediction (its worker crashed)",
                answer=error[:ANSWER_LOGGED],
            )
        return Prediction(prediction_id, status, error=error, **seen)

    async def cancel(self, prediction_id: str) -> None:
        handle = Handle.parse(prediction_id)
        if handle is None:
            return  # not a prediction of ours: nothing to stop
        # Also a server a reload of the models file took away: what it runs still finishes.
        endpoint = next(
            (e for e in self.catalog.known_endpoints() if endpoint_key(e.url) == handle.endpoint),
            None,
        )
        if endpoint is None:
            log.warning("cancel of %s: its Cog server is no longer in the models file", handle)
            return
        what = f"cog cancel {handle.cog_id} on endpoint {handle.endpoint}"
        given = given_id(await webhook_key(self.settings), handle.cog_id)
        url = f"{endpoint.url}/predictions/{quote(given, safe='')}/cancel"
        try:
            reply = await self.outbound.call("POST", url, self._api)
        except OutboundError as exc:
            raise provider_error(exc, f"{what}: {exc.reason}", url=url) from exc.__cause__ or exc
        if reply.status != 404:  # 404: finished, or never there (a restarted server)
            check_reply(reply, what)

    async def reported(self, prediction_id: str) -> bool:
        """Its terminal webhook came first: the API found the prediction not recorded yet, so
        sent no poll (`webhooks`); this look after the record closes that gap."""
        handle = Handle.parse(prediction_id)
        if handle is None:
            return False
        try:
            return bool(await self._records().exists(DONE + handle.cog_id))
        except RedisError:  # the regular poll finds it
            return False

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
                content_type, ext = checked_headers(stream, self.settings)
                yield Fetched(provider_chunks(stream), content_type, ext)
        except OutboundError as exc:
            raise provider_error(exc, f"output {exc.reason}", url=url) from exc.__cause__ or exc

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
        yield Fetched(staged_chunks(storage, key), content_type, ext)
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


def worker_crashed(error: str | None) -> bool:
    """Whether a failed prediction's error says the server's worker died: the server was
    stopped or killed, or ran out of memory. The server goes away (or restarts) with it."""
    return model_message(error).startswith("Worker crashed")


def _never_sent(exc: OutboundError) -> bool:
    """True when the request cannot have reached the server (refused, unreachable): another
    server may take the prediction without any risk of running it twice."""
    return exc.message.startswith("cannot connect")
