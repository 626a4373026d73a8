"""What the API records of each HTTP request: its request id (`X-Request-ID`, taken from the
client when it is a sensible token, else made; returned on every response), one access log line
(`mediagen.access`: method, route template, status, duration) and the request metrics.

`install` wraps the whole application, Starlette's own error handling included, so a 500, a 413
from the body limit and the fast paths' answers carry the id and are counted like the rest. The
route is the template that answered (`/api/v1/status/{job_id}`), never the raw path: the fast
path leaves it in `scope["mediagen.route"]`, a FastAPI route in `scope["route"]`; an unmatched
request is "other". With ACCESS_LOG and METRICS_ENABLED both off, only the request id remains.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediagen.config import Settings
from mediagen.jobs.fastpath import ROUTE
from mediagen.observability import logs, metrics

HEADER = "X-Request-ID"
ACCESS_LOGGER = "mediagen.access"
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,128}")

Observe = Callable[[str, str, int, float], None]


def valid_request_id(value: str) -> bool:
    """A client's id is kept if it is a plain token of at most 128 characters."""
    return _TOKEN.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


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
    """Pure ASGI: times each HTTP request, notes its status, then logs and counts it."""

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
        self.access = logs.get_logger(ACCESS_LOGGER) if access_log else None

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
            seconds = perf_counter() - started
            # No answer and no error: the client left first (nginx's 499).
            self._record(scope, status or 499, seconds)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_of(scope, self.endpoints)
        method: str = scope["method"]
        if self.access is not None:
            self.access.info(
                "request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
            )
        if self.observe is not None:
            self.observe(route, method, status, seconds)


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
        return CorrelationIdMiddleware(
            inner, header_name=HEADER, generator=new_request_id, validator=valid_request_id
        )

    app.build_middleware_stack = build_with_observation  # type: ignore[method-assign]
