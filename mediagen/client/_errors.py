"""The client's exceptions: one tree, all carrying what the API said.

Every error the client raises is a :class:`MediagenError` with

- ``code``: the API's machine code (``"not_found"``, ``"rate_limited"``, ``"validation_error"``...;
  ``"connection_error"`` when the server could not be reached, ``"job_failed"`` for a job that
  ended badly);
- ``status``: the HTTP status (``None`` when there was no answer);
- ``detail``: the human message;
- ``retry_after``: seconds the server asked us to wait (``Retry-After``), else ``None``;
- ``body``: the whole JSON error body (``errors`` for 422s, ``status`` for a 409 on cancel...).

The subclasses, by HTTP status::

    MediagenError
    ├── AuthenticationError       401, 403 (missing/invalid/revoked key; an expired media URL)
    ├── NotFoundError             404 (no job of yours with this id)
    ├── ConflictError             409 (cancel of a finished job; an Idempotency-Key in progress)
    ├── ValidationError           422 (invalid body or parameters; 413 too)
    ├── RateLimitedError          429 (retried with backoff first; ``retry_after`` set)
    ├── ServiceUnavailableError   503 (retried with backoff first)
    ├── APIConnectionError        no answer (connection refused, reset, timed out)
    └── JobFailedError            ``run(...)`` or ``wait(..., raise_on_failure=True)`` on a
                                  job that ended failed, canceled or expired; ``job`` holds
                                  it, ``code`` is ``job_failed``/``job_canceled``/``job_expired``

Any other status is a plain :class:`MediagenError`. JobFailedError is defined beside the Job it
carries (``mediagen.client._models``), so that this module imports no other of the client's.
"""

from __future__ import annotations

import email.utils
import socket
import time
from typing import Any

import httpx


class MediagenError(Exception):
    """Base of every client error (see the module docstring)."""

    def __init__(
        self,
        detail: str,
        *,
        code: str = "error",
        status: int | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.body: dict[str, Any] = body or {}

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.detail}"


class AuthenticationError(MediagenError):
    """401/403."""


class NotFoundError(MediagenError):
    """404."""


class ConflictError(MediagenError):
    """409."""


class ValidationError(MediagenError):
    """422 (and 413)."""


class RateLimitedError(MediagenError):
    """429."""


class ServiceUnavailableError(MediagenError):
    """503."""


class APIConnectionError(MediagenError):
    """The server could not be reached or dropped the connection."""


def unreachable(url: str, exc: httpx.TransportError, connect_timeout: float) -> APIConnectionError:
    """The one line for a server that did not answer at `url`: where, why in a few words (the
    socket's own error, under httpx's), and what to check."""
    inner: BaseException = exc
    while (cause := inner.__cause__ or inner.__context__) is not None:
        inner = cause
    if isinstance(exc, httpx.ConnectTimeout) or isinstance(inner, TimeoutError):
        why = f"no answer within {connect_timeout:g} s"
    elif isinstance(inner, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(inner, socket.gaierror):
        why = f"unknown host: {inner.strerror}"
    elif isinstance(inner, OSError) and inner.strerror:
        why = inner.strerror
    else:
        why = str(exc) or type(exc).__name__
    return APIConnectionError(
        f"cannot reach the mediagen server at {url} ({why}): is it running? "
        "check MEDIAGEN_URL (or --url)",
        code="connection_error",
    )


_BY_STATUS: dict[int, type[MediagenError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> MediagenError:
    """The exception for an error answer, from its JSON body ``{"detail", "code", ...}``."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    detail = body.get("detail")
    if not isinstance(detail, str):
        detail = (
            str(detail) if detail is not None else (response.text[:500] or response.reason_phrase)
        )
    code = body.get("code")
    if not isinstance(code, str):
        code = f"http_{response.status_code}"
    cls = _BY_STATUS.get(response.status_code, MediagenError)
    return cls(
        detail,
        code=code,
        status=response.status_code,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        body=body,
    )
