"""What every provider's HTTP answers and output downloads are checked against, in one place:
the media types we store, the answer of a call as the provider error it means, a download's
headers and bytes, and the download policy (size, deadline, addresses, redirects).

A provider error's message becomes the job's public `error` (`mediagen.jobs.pipeline`), read by
whoever made the job: it says what failed in plain words (the status, "timed out", a Cog
endpoint by its short key), never the upstream URL or what the other side answered (but for
Replicate's reason for refusing a request: `check_reply`'s `shown_4xx`). Those are the error's
`details` (`url`, `answer`, `cause`), which the worker logs with the job's line. A prediction
that failed shows the model's own message, once (`model_message`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson

from mediagen.config import Settings
from mediagen.errors import (
    OutboundError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from mediagen.outbound import Policy, Reply, Stream, classify

MAX_REDIRECTS = 5
ANSWER_LOGGED = 300  # characters of an upstream error answer kept for the logs
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
CANONICAL = {ext: media for media, ext in reversed(MEDIA_TYPES.items())}  # first type wins
_OCTET = ("", "application/octet-stream", "binary/octet-stream")
# What a server puts before a model's own error, once or more (Cog: `Prediction failed: `).
_FAILED = re.compile(r"^(\s*(async )?prediction failed:)+\s*", re.IGNORECASE)
NO_MESSAGE = "the model failed without an error message"


def model_message(error: str | None) -> str:
    """A failed prediction's error as its job shows it: the model's own message, once, without
    the `Prediction failed: ` a server put before it (Cog's, sometimes twice)."""
    return _FAILED.sub("", error or "").strip() or NO_MESSAGE


def download_policy(settings: Settings) -> Policy:
    """How outputs are fetched: the download deadline and size cap, public addresses only
    (unless DOWNLOAD_ALLOW_PRIVATE), redirects followed by hand and each one checked."""
    return Policy(
        deadline=settings.download_timeout,
        max_bytes=settings.download_max_bytes,
        allow_private=settings.download_allow_private,
        redirects=MAX_REDIRECTS,
    )


def _detail(reply: Reply) -> str:
    """What the other side said, for the logs (at most ANSWER_LOGGED characters)."""
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return reply.body[:ANSWER_LOGGED].decode(errors="replace").strip()
    if isinstance(data, dict):
        text = data.get("detail") or data.get("title") or data.get("error")
        if text:
            return str(text)[:ANSWER_LOGGED]
    return str(data)[:ANSWER_LOGGED]


def http_status(status: int) -> str:
    """`HTTP 500 Internal Server Error`: a status in plain words."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def check_reply(reply: Reply, what: str, *, shown_4xx: bool = False) -> None:
    """Raise the provider error a non-2xx answer means: `what` failed, with its status; the
    answer itself and the URL go in the details (logged, never shown). `shown_4xx`: the answer
    to a request it refused (4xx) is written for the caller and is shown too (Replicate's API
    says why it refused an input)."""
    verdict = classify(reply.status)
    if verdict == "ok":
        return
    answer = _detail(reply)
    message = f"{what}: {http_status(reply.status)}"
    if shown_4xx and verdict == "fail" and 400 <= reply.status < 500 and answer:
        message += f": {answer}"
    details: dict[str, Any] = {"http_status": reply.status, "url": reply.url, "answer": answer}
    if verdict == "retry":
        raise RetryableProviderError(message, retry_after=reply.retry_after, **details)
    raise PermanentProviderError(message, **details)


def provider_error(exc: OutboundError, message: str, **details: object) -> ProviderError:
    """`exc` as the provider error it means (raise it from what went wrong on the wire). Write
    `message` with `exc.reason`, never `exc.message`: that one (it may name an address) goes
    in the details."""
    cls = RetryableProviderError if exc.retryable else PermanentProviderError
    return cls(
        message,
        retry_after=exc.retry_after,
        http_status=exc.status,
        cause=exc.message,
        **details,
    )


def media_type(header: str | None, url: str) -> tuple[str, str]:
    """(content type, extension) of a download, from its header or, for octet-stream, its URL."""
    media = (header or "").split(";")[0].strip().lower()
    if media in MEDIA_TYPES:
        ext = MEDIA_TYPES[media]
        return CANONICAL[ext], ext
    if media in _OCTET:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower().lstrip(".")
        suffix = {"jpeg": "jpg"}.get(suffix, suffix)
        if suffix in CANONICAL:
            return CANONICAL[suffix], suffix
    raise PermanentProviderError(f"output has unsupported content type {media or 'none'!r}")


def checked_headers(stream: Stream, settings: Settings) -> tuple[str, str]:
    """(content type, extension) of a download, or the error its status or headers mean."""
    status, url = stream.status, stream.url
    if status in (404, 410):
        raise PermanentProviderError(f"output not found (HTTP {status})", url=url)
    if classify(status) == "retry":
        raise RetryableProviderError(
            f"output download: HTTP {status}",
            retry_after=stream.retry_after,
            http_status=status,
            url=url,
        )
    if status != 200:
        raise PermanentProviderError(f"output download: HTTP {status}", http_status=status, url=url)
    encoding = stream.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for identity; a compressed answer is not decompressed (it could be a bomb).
        raise PermanentProviderError(f"output sent with Content-Encoding {encoding!r}")
    return media_type(stream.headers.get("content-type"), stream.url)


async def provider_chunks(stream: Stream) -> AsyncIterator[bytes]:
    """The download's bytes, its failures raised as the provider errors they mean."""
    try:
        async for chunk in stream.chunks:
            yield chunk
    except OutboundError as exc:
        raise provider_error(exc, f"output {exc.reason}", url=stream.url) from (
            exc.__cause__ or exc
        )
