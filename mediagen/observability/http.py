"""What the API records of each HTTP request: its request id (`X-Request-ID`, taken from the
client when it is a sensible token, else made; returned on every response), one access log line
(`mediagen.access`: client address, method, route template, status, duration) and the request
metrics. The client address is the peer's, or behind a trusted proxy the one it forwarded
(`mediagen.proxy`).

`install` wraps the whole application, Starlette's own error handling included, so a 500, a 413
from the body limit and the fast paths' answers carry the id and are counted like the rest. The
route is the template that answered (`/api/v1/status/{job_id}`), never the raw path: the fast
path leaves it in `scope["mediagen.route"]`, a FastAPI route in `scope["route"]`; an unmatched
request is "other". With ACCESS_LOG and METRICS_ENABLED both off, only the request id remains.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import re
import secrets
from collections.abc import Callable
from time import perf_counter, time
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediagen.config import Settings
from mediagen.observability import logs, metrics
from mediagen.observability.context import job_id, request_id

# Where a request's route template is found when no FastAPI route ran (scope["route"] else):
# the fast paths (`mediagen.jobs.fastpath`) put theirs there.
ROUTE = "mediagen.route"

HEADER = "X-Request-ID"
FLUSH_EVERY = 0.2  # seconds a request waits, at most, to be logged and counted
FLUSH_REQUESTS = 1024
ACCESS_LOGGER = "mediagen.access"
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,128}")

Observe = Callable[[str, str, int, float], None]


def valid_request_id(value: str) -> bool:
    """A client's id is kept if it is a plain token of at most 128 characters."""
    return _TOKEN.fullmatch(value) is not None


class _Ids:
    """Request ids: 16 random hex digits per process, then a counter (32 hex digits in all).
    Unique without a system call per request (uuid4 reads the OS's randomness each time: 6%
    of a status read); an id names a request, it guards nothing, so it need not be unguessable.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.prefix = ""
        self.count = itertools.count()

    def __call__(self) -> str:
        if self.pid != os.getpid():  # a forked process makes its own
            self.pid, self.prefix = os.getpid(), secrets.token_hex(8)
        return f"{self.prefix}{next(self.count):016x}"


new_request_id = _Ids()


def templates(app: FastAPI) -> dict[Any, str]:
    """The templates of the application's own (not included) routes and mounts, by endpoint:
    FastAPI leaves no `scope["route"]` for those (`/openapi.json`, `/docs`, `/media`)."""
    found: dict[Any, str] = {}
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None) or getattr(route, "app", None)
        path = getattr(route, "path_format", None)
        if endpoint is not None and isinstance(path, str):
            with contextlib.suppress(TypeError):  # an unhashable endpoint: "other"
                found.setdefault(endpoint, path)
    return found


def route_of(scope: Scope, endpoints: dict[Any, str] | None = None) -> str:
    """The template of the route that answered, or "other"."""
    template = scope.get(ROUTE)
    if template is not None:
        return str(template)
    # FastAPI (0.16x) includes routers lazily: `scope["route"]` is the router's own route
    # (`/jobs/{job_id}`), the template with the include's prefix is on the effective route.
    fastapi = scope.get("fastapi")
    route = fastapi.get("effective_route_context") if isinstance(fastapi, dict) else None
    if route is None:
        route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    if endpoints and (endpoint := scope.get("endpoint")) is not None:
        with contextlib.suppress(TypeError):
            return endpoints.get(endpoint, "other")
    return "other"


class RequestObserver:
    """Pure ASGI: times each HTTP request and notes its status; logs and counts it a batch at a
    time, at most FLUSH_EVERY later. Per request that is one tuple appended: rendering a line
    and updating the metrics inside each request cost a busy API 15% of its status reads
    (measured), far more than the same work done for many requests in one go. A scrape of
    /metrics first takes in what waits (`metrics.before_scrape`)."""

    def __init__(
        self,
        app: ASGIApp,
        access_log: bool,
        observe: Observe | None,
        endpoints: dict[Any, str] | None = None,
    ) -> None:
        self.app = app
        self.endpoints = endpoints or {}
        self.observe = observe
        self.access = logs.access_log(ACCESS_LOGGER) if access_log else None
        self.pending: list[logs.Request] = []
        metrics.before_scrape(self.flush)
        atexit.register(self.flush)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except BaseException:
            status = status or 500  # the error middleware answered (or could not)
            raise
        finally:
            # No answer and no error: the client left first (nginx's 499).
            self.pending.append(
                (
                    time(),
                    request_id.get(),
                    job_id.get(),
                    client[0] if (client := scope.get("client")) else None,
                    scope["method"],
                    route_of(scope, self.endpoints),
                    status or 499,
                    perf_counter() - started,
                )
            )
            if len(self.pending) == 1:
                asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
            elif len(self.pending) >= FLUSH_REQUESTS:
                self.flush()

    def flush(self) -> None:
        """Log and count what waits."""
        requests, self.pending = self.pending, []
        if not requests:
            return
        if self.access is not None:
            self.access(requests)
        if self.observe is not None:
            observe = self.observe
            for _, _, _, _, method, route, status, seconds in requests:
                observe(route, method, status, seconds)


class RequestIds(CorrelationIdMiddleware):
    """asgi-correlation-id's middleware without its Sentry extension, which imports sentry-sdk
    wherever it is installed and tags Sentry's scope on every request, error tracking on or
    off: an error report takes the request id from the context (`observability.sentry`)."""

    def __post_init__(self) -> None:
        self.sentry_extension = _untracked


def _untracked(_: str) -> None:
    return None


def install(app: FastAPI, settings: Settings) -> None:
    """Wrap `app` (outermost: the request id, then the observer, if ACCESS_LOG or
    METRICS_ENABLED) around everything, Starlette's error middleware included."""
    observe: Observe | None = metrics.observe_request if settings.metrics_enabled else None
    access_log = settings.access_log
    build = app.build_middleware_stack

    def build_with_observation() -> ASGIApp:
        inner = build()
        if access_log or observe is not None:
            inner = RequestObserver(inner, access_log, observe, templates(app))
        return RequestIds(
            inner, header_name=HEADER, generator=new_request_id, validator=valid_request_id
        )

    app.build_middleware_stack = build_with_observation  # type: ignore[method-assign]
