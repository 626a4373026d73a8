"""Replicate provider: the predictions API and output downloads, through `mediagen.outbound`.

Why not the official `replicate` client: its `create` is never retried and its errors are one
coarse `ReplicateError`, while the job pipeline needs the raw status code and `Retry-After` to
decide retryable vs permanent itself; we also need a download path that checks size, type and
address (SSRF), which the client doesn't do. The four calls we use are small enough to speak.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import orjson

from mediagen.config import Settings, get_settings
from mediagen.errors import (
    OutboundError,
    PermanentProviderError,
    RetryableProviderError,
)
from mediagen.jobs import values
from mediagen.outbound import Outbound, Policy
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)
from mediagen.providers.downloads import (
    ANSWER_LOGGED,
    CANONICAL,
    MEDIA_TYPES,
    check_reply,
    checked_headers,
    download_policy,
    provider_chunks,
    provider_error,
)

API_MAX_BYTES = 8 * 1024 * 1024  # a prediction, logs included
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_MODEL = re.compile(r"^[\w.-]+/[\w.-]+$")
_PROGRESS = re.compile(r"(\d{1,3})%\|[^|\r\n]*\|\s*(\d+)/(\d+)")


def parse_progress(logs: str | None) -> dict[str, int] | None:
    """{current, total, percent} from the last tqdm-style line (`40%|####  | 20/50 [...]`)."""
    match = None
    for match in _PROGRESS.finditer(logs or ""):  # noqa: B007 - keep the last one
        pass
    if match is None or int(match.group(3)) <= 0:
        return None
    percent, current, total = (int(group) for group in match.groups())
    return {"current": current, "total": total, "percent": percent}


def _is_file(value: str) -> bool:
    """Whether a string in a prediction's output is a file: an http(s) URL (Replicate's
    files); any other string is text, kept in the job's output value."""
    return value.startswith(("https://", "http://"))


def _prediction(data: Any) -> Prediction:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise RetryableProviderError(
            "replicate returned no prediction", answer=str(data)[:ANSWER_LOGGED]
        )
    status = PredictionStatus.parse(data.get("status"))
    if status is None:
        raise RetryableProviderError(f"replicate returned unknown status {data.get('status')!r}")
    logs = data.get("logs") if isinstance(data.get("logs"), str) else None
    error = None
    if status is PredictionStatus.FAILED:
        error = str(data.get("error") or f"prediction {data.get('status')} without an error text")
    outputs: list[Output] = []
    # Its output value (`mediagen.jobs.values`): the files in it are its outputs; while it
    # runs, what a streaming model yielded so far.
    output = values.streamed(data.get("output"), _is_file)
    if status is PredictionStatus.SUCCEEDED:
        output, files = values.split(data.get("output"), _is_file)
        outputs = [Output(url=url, at=at) for at, url in files]
        if not outputs and output is None:
            raise PermanentProviderError("prediction succeeded without any output")
    return Prediction(
        data["id"],
        status,
        outputs,
        error,
        logs,
        predict_time=_predict_time(data),
        poll_after=None,
        output=output,
    )


def _predict_time(data: dict[str, Any]) -> float | None:
    """`metrics.predict_time` (seconds), which Replicate gives once a prediction has ended."""
    metrics = data.get("metrics")
    value = metrics.get("predict_time") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class ReplicateProvider:
    name = "replicate"

    def __init__(self, settings: Settings | None = None, outbound: Outbound | None = None) -> None:
        self.settings = settings or get_settings()
        self._base = self.settings.replicate_base_url.rstrip("/")
        self._owned = outbound is None
        self.outbound = outbound or Outbound()
        # The API is the operator's choice of endpoint: not pinned (it may be internal).
        self._api = Policy(
            deadline=self.settings.replicate_timeout, max_bytes=API_MAX_BYTES, pin=False
        )
        self._downloads = download_policy(self.settings)

    async def close(self) -> None:
        if self._owned:
            await self.outbound.close()

    def _auth(self) -> dict[str, str]:
        """The API token's header: for the API base only, never for output hosts."""
        return {"Authorization": f"Bearer {self.settings.replicate_api_token.get_secret_value()}"}

    async def _call(
        self, method: str, path: str, what: str, body: dict[str, Any] | None = None
    ) -> Prediction:
        """One API call; the token goes only to the API base, never to output hosts."""
        headers = self._auth()
        try:
            reply = await self.outbound.call(
                method, self._base + path, self._api, json=body, headers=headers
            )
        except OutboundError as exc:
            raise provider_error(exc, f"{what}: {exc.reason}") from exc.__cause__ or exc
        check_reply(reply, what, shown_4xx=True)
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise RetryableProviderError(f"{what}: invalid JSON from replicate") from exc
        return _prediction(data)

    async def create(self, request: GenerationRequest) -> Prediction:
        # A models file's entry may ask Replicate for another name than its public one (`ref`).
        ref = request.route.ref if request.route is not None else None
        model = ref or request.model or self.settings.replicate_default_model
        # Input files as URLs it can fetch (presigned, signed /media), else data: URIs.
        body: dict[str, Any] = {"input": await request.provider_input()}
        if request.webhook_url:
            body["webhook"] = request.webhook_url
            body["webhook_events_filter"] = WEBHOOK_EVENTS
        name, _, version = model.rpartition(":") if ":" in model else ("", "", model)
        if _VERSION.match(version) and (not name or _MODEL.match(name)):
            body["version"] = version
            path = "/predictions"
        elif _MODEL.match(model):
            path = f"/models/{model}/predictions"
        else:
            raise PermanentProviderError(
                f"invalid model {model!r}: expected owner/name, owner/name:version or a version id"
            )
        return await self._call("POST", path, f"replicate create ({model})", body)

    async def get(self, prediction_id: str, request: GenerationRequest) -> Prediction:
        path = f"/predictions/{quote(prediction_id, safe='')}"
        return await self._call("GET", path, f"replicate get {prediction_id}")

    async def cancel(self, prediction_id: str) -> None:
        what = f"replicate cancel {prediction_id}"
        path = f"/predictions/{quote(prediction_id, safe='')}/cancel"
        headers = self._auth()
        try:
            reply = await self.outbound.call("POST", self._base + path, self._api, headers=headers)
        except OutboundError as exc:
            raise provider_error(exc, f"{what}: {exc.reason}") from exc.__cause__ or exc
        if reply.status not in (404, 409):  # gone or already terminal: nothing to stop
            check_reply(reply, what)

    async def reported(self, prediction_id: str) -> bool:
        return False  # a poll asks Replicate itself

    @asynccontextmanager
    async def fetch(self, output: Output) -> AsyncIterator[Fetched]:
        if output.data is not None:
            media = (output.content_type or "").split(";")[0].strip().lower()
            if media not in MEDIA_TYPES:
                raise PermanentProviderError(f"inline output has unsupported type {media!r}")
            yield Fetched(output.data, CANONICAL[MEDIA_TYPES[media]], MEDIA_TYPES[media])
            return
        if not output.url:
            raise PermanentProviderError("output has neither a URL nor data")
        # The download policy's deadline covers the whole context, streaming included; a
        # failure while the consumer (storage.save) reads unwinds it and keeps nothing.
        try:
            async with self.outbound.open("GET", output.url, self._downloads) as stream:
                content_type, ext = checked_headers(stream, self.settings)
                yield Fetched(provider_chunks(stream), content_type, ext)
        except OutboundError as exc:
            raise provider_error(exc, f"output {exc.reason}", url=output.url) from (
                exc.__cause__ or exc
            )
