"""The ids that follow a request into the workers: the request id and the job id, as context
variables (set per request by the API's middleware, per step by a worker task), and the headers
that carry them, and the trace context, on every task message published meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar

from asgi_correlation_id import correlation_id

# The request id: asgi-correlation-id sets it from X-Request-ID (or makes one) in the API; a
# worker task sets it from its message's header (or the job row).
request_id: ContextVar[str | None] = correlation_id
job_id: ContextVar[str | None] = ContextVar("mediagen_job_id", default=None)

REQUEST_ID_HEADER = "mediagen_request_id"  # on Celery messages (a header name Celery keeps)

Ids = tuple[str | None, str | None]  # (request id, job id)

_header_sources: list[Callable[[dict[str, str]], None]] = []


def register_header_source(source: Callable[[dict[str, str]], None]) -> None:
    """Add a function that writes headers (e.g. `traceparent`) onto every outgoing message."""
    if source not in _header_sources:
        _header_sources.append(source)


def current_headers() -> dict[str, str]:
    """The headers for a task message published now: the request id and any trace context."""
    headers: dict[str, str] = {}
    if (rid := request_id.get()) is not None:
        headers[REQUEST_ID_HEADER] = rid
    for source in _header_sources:
        source(headers)
    return headers


def current() -> Ids:
    """The request and job ids in force."""
    return request_id.get(), job_id.get()


def restore(ids: Ids) -> None:
    """Put ids that `current` returned (in another context) in force here."""
    request_id.set(ids[0])
    job_id.set(ids[1])


def adopt(headers: Mapping[str, object], job: str | None = None) -> None:
    """In a worker task: take the request id from the message (and name the job)."""
    rid = headers.get(REQUEST_ID_HEADER)
    request_id.set(rid if isinstance(rid, str) else None)
    job_id.set(job)
