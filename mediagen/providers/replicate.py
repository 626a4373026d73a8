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
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from mediagen.config import Settings, get_settings
from mediagen.errors import (
    OutboundError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from mediagen.outbound import Outbound, Policy, Reply, Stream, classify
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)

MAX_REDIRECTS = 5
API_MAX_BYTES = 8 * 1024 * 1024  # a prediction, logs included
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]
# Media types we store, and the extension each gets; anything else (HTML, SVG, JSON) is refused.
MEDIA_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/mpeg": "mp3",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
}
_CANONICAL = {ext: media for media, ext in reversed(MEDIA_TYPES.items())}  # first type wins
_OCTET = ("", "application/octet-stream", "binary/octet-stream")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_MODEL = re.compile(r"^[\w.-]+/[\w.-]+$")
_PROGRESS = re.compile(r"(\d{1,3})%\|[^|\r\n]*\|\s*(\d+)/(\d+)")
_STATUSES = {status.value: status for status in PredictionStatus} | {
    "aborted": PredictionStatus.FAILED  # terminated before it ran (e.g. a deadline)
}


def parse_progress(logs: str | None) -> dict[str, int] | None:
    """{current, total, percent} from the last tqdm-style line (`40%|####  | 20/50 [...]`)."""
    match = None
    for match in _PROGRESS.finditer(logs or ""):  # noqa: B007 - keep the last one
        pass
    if match is None or int(match.group(3)) <= 0:
        return None
    percent, current, total = (int(group) for group in match.groups())
    return {"current": current, "total": total, "percent": percent}


def _detail(reply: Reply) -> str:
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return reply.body[:300].decode(errors="replace").strip() or f"HTTP {reply.status}"
    if isinstance(data, dict):
        text = data.get("detail") or data.get("title") or data.get("error")
        if text:
            return str(text)
    return str(data)[:300]


def _check(reply: Reply, what: str) -> None:
    """Raise the provider error a non-2xx answer means."""
    verdict = classify(reply.status)
    if verdict == "ok":
        return
    message = f"{what}: HTTP {reply.status}: {_detail(reply)}"
    if verdict == "retry":
        raise RetryableProviderError(
            message, retry_after=reply.retry_after, http_status=reply.status
        )
    raise PermanentProviderError(message, http_status=reply.status)


def _provider_error(exc: OutboundError, message: str) -> ProviderError:
    """`exc` as the provider error it means (raise it from what went wrong on the wire)."""
    cls = RetryableProviderError if exc.retryable else PermanentProviderError
    return cls(message, retry_after=exc.retry_after, http_status=exc.status)


def _urls(value: Any) -> list[str]:
    """Output URLs in the shapes Replicate returns: one string, a list, or a dict of them."""
    if isinstance(value, str):
        return [value] if value.startswith(("https://", "http://")) else []
    if isinstance(value, list | tuple):
        return [url for item in value for url in _urls(item)]
    if isinstance(value, dict):
        return [url for item in value.values() for url in _urls(item)]
    return []


def _prediction(data: Any) -> Prediction:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise RetryableProviderError(f"replicate returned no prediction: {str(data)[:200]}")
    status = _STATUSES.get(str(data.get("status")))
    if status is None:
        raise RetryableProviderError(f"replicate returned unknown status {data.get('status')!r}")
    logs = data.get("logs") if isinstance(data.get("logs"), str) else None
    error = None
    if status is PredictionStatus.FAILED:
        error = str(data.get("error") or f"prediction {data.get('status')} without an error text")
    outputs: list[Output] = []
    if status is PredictionStatus.SUCCEEDED:
        outputs = [Output(url=url) for url in _urls(data.get("output"))]
        if not outputs:
            raise PermanentProviderError("prediction succeeded without any output URL")
    return Prediction(data["id"], status, outputs, error, logs, poll_after=None)


def _media_type(header: str | None, url: str) -> tuple[str, str]:
    """(content type, extension) of a download, from its header or, for octet-stream, its URL."""
    media = (header or "").split(";")[0].strip().lower()
    if media in MEDIA_TYPES:
        ext = MEDIA_TYPES[media]
        return _CANONICAL[ext], ext
    if media in _OCTET:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower().lstrip(".")
        suffix = {"jpeg": "jpg"}.get(suffix, suffix)
        if suffix in _CANONICAL:
            return _CANONICAL[suffix], suffix
    raise PermanentProviderError(f"output has unsupported content type {media or 'none'!r}")


def _checked_headers(stream: Stream, settings: Settings) -> tuple[str, str]:
    """(content type, extension) of a download, or the error its status or headers mean."""
    status = stream.status
    if status in (404, 410):
        raise PermanentProviderError(f"output not found (HTTP {status})")
    if classify(status) == "retry":
        raise RetryableProviderError(
            f"output download: HTTP {status}", retry_after=stream.retry_after, http_status=status
        )
    if status != 200:
        raise PermanentProviderError(f"output download: HTTP {status}", http_status=status)
    encoding = stream.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for identity; a compressed answer is not decompressed (it could be a bomb).
        raise PermanentProviderError(f"output sent with Content-Encoding {encoding!r}")
    return _media_type(stream.headers.get("content-type"), stream.url)


async def _provider_chunks(stream: Stream) -> AsyncIterator[bytes]:
    """The download's bytes, its failures raised as the provider errors they mean."""
    try:
        async for chunk in stream.chunks:
            yield chunk
    except OutboundError as exc:
        raise _provider_error(exc, f"output {exc.message}") from exc.__cause__ or exc


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
        self._downloads = Policy(
            deadline=self.settings.download_timeout,
            max_bytes=self.settings.download_max_bytes,
            allow_private=self.settings.download_allow_private,
            redirects=MAX_REDIRECTS,
        )

    async def close(self) -> None:
        if self._owned:
            await self.outbound.close()

    async def _call(
        self, method: str, path: str, what: str, body: dict[str, Any] | None = None
    ) -> Prediction:
        """One API call; the token goes only to the API base, never to output hosts."""
        headers = {"Authorization": f"Bearer {self.settings.replicate_api_token}"}
        try:
            reply = await self.outbound.call(
                method, self._base + path, self._api, json=body, headers=headers
            )
        except OutboundError as exc:
            raise _provider_error(exc, f"{what}: {exc.message}") from exc.__cause__ or exc
        _check(reply, what)
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise RetryableProviderError(f"{what}: invalid JSON from replicate") from exc
        return _prediction(data)

    async def create(self, request: GenerationRequest) -> Prediction:
        # A models file's entry may ask Replicate for another name than its public one (`ref`).
        ref = request.route.ref if request.route is not None else None
        model = ref or request.model or self.settings.replicate_default_model
        body: dict[str, Any] = {"input": {**request.parameters, "prompt": request.prompt}}
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
        headers = {"Authorization": f"Bearer {self.settings.replicate_api_token}"}
        try:
            reply = await self.outbound.call("POST", self._base + path, self._api, headers=headers)
        except OutboundError as exc:
            raise _provider_error(exc, f"{what}: {exc.message}") from exc.__cause__ or exc
        if reply.status not in (404, 409):  # gone or already terminal: nothing to stop
            _check(reply, what)

    @asynccontextmanager
    async def fetch(self, output: Output) -> AsyncIterator[Fetched]:
        if output.data is not None:
            media = (output.content_type or "").split(";")[0].strip().lower()
            if media not in MEDIA_TYPES:
                raise PermanentProviderError(f"inline output has unsupported type {media!r}")
            yield Fetched(output.data, _CANONICAL[MEDIA_TYPES[media]], MEDIA_TYPES[media])
            return
        if not output.url:
            raise PermanentProviderError("output has neither a URL nor data")
        # The download policy's deadline covers the whole context, streaming included; a
        # failure while the consumer (storage.save) reads unwinds it and keeps nothing.
        try:
            async with self.outbound.open("GET", output.url, self._downloads) as stream:
                content_type, ext = _checked_headers(stream, self.settings)
                yield Fetched(_provider_chunks(stream), content_type, ext)
        except OutboundError as exc:
            raise _provider_error(exc, f"output {exc.message}") from exc.__cause__ or exc
