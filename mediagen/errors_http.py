"""The one place where errors become HTTP answers. It decides what an error is (`HttpError`:
status, detail, code, errors, headers) and writes it in the shape of the surface the request
came to: mediagen's own `{detail, code, errors?}` (`render`), or the renderer that an API of
another shape registered for its path prefix when it was installed (`add_renderer`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import asyncpg
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from tortoise.exceptions import DBConnectionError, OperationalError

from mediagen.errors import (
    DatabaseUnavailableError,
    MediagenError,
    RedisUnavailableError,
    ServiceUnavailableError,
)
from mediagen.observability import metrics, sentry
from mediagen.proxy import route_path

log = logging.getLogger(__name__)

# What the database driver raises when Postgres is down or the connection dropped. Tortoise
# wraps driver errors in OperationalError, which also covers bad data: only its connection-type
# causes mean "unavailable".
_DB_DOWN: tuple[type[BaseException], ...] = (
    DBConnectionError,
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # The pool releasing a connection the server is closing ("cannot switch to state ...").
    asyncpg.InternalClientError,
)


# What redis-py raises when Redis cannot serve a request: refused, timed out, this process's
# pool for the client exhausted (MaxConnectionsError), a demoted primary (READONLY). Any other
# RedisError (a wrong command or type) is ours: a 500.
_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)
UNAVAILABLE_RETRY_AFTER = 5


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, _DB_DOWN):
        return True
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, _DB_DOWN)


@dataclass(frozen=True)
class HttpError:
    """An error as HTTP answers it, before it is written in a surface's shape: `fields` carry
    an error's details (a 409's `status`)."""

    status: int
    detail: str
    code: str
    errors: Any = None
    headers: dict[str, str] | None = None
    fields: dict[str, Any] = field(default_factory=dict)


Renderer = Callable[[HttpError], Response]
_RENDERERS = "error_renderers"  # the app.state attribute: {path prefix: renderer}


def render(error: HttpError) -> JSONResponse:
    """mediagen's own shape: `{detail, code, errors?, ...fields}`."""
    body: dict[str, Any] = {"detail": error.detail, "code": error.code}
    body.update(jsonable_encoder(error.fields))
    if error.errors is not None:
        body["errors"] = jsonable_encoder(error.errors)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def add_renderer(app: FastAPI, prefix: str, renderer: Renderer) -> None:
    """Errors of requests at `prefix` or under it are written by `renderer` (the surface of an
    API of another shape, mounted there)."""
    renderers: dict[str, Renderer] = getattr(app.state, _RENDERERS, {})
    renderers[prefix] = renderer
    setattr(app.state, _RENDERERS, renderers)


def _rendered(request: Request, error: HttpError) -> Response:
    """`error` in the shape of the surface the request came to."""
    renderers: dict[str, Renderer] = getattr(request.app.state, _RENDERERS, {})
    if renderers:
        path = route_path(request.scope)  # without ROOT_PATH
        for prefix, renderer in renderers.items():
            if path == prefix or path.startswith(prefix + "/"):
                return renderer(error)
    return render(error)


def _request_location(loc: tuple[Any, ...]) -> str:
    """Where in a request an error is (`body` itself left out, unless that is all there is)."""
    return ".".join(str(p) for p in loc if p != "body") or "body"


def describe(
    errors: Iterable[Mapping[str, Any]],
    where: Callable[[tuple[Any, ...]], str] = _request_location,
) -> str:
    """A 422's detail: its first five errors as `location: message; ...`, each location as
    `where` writes it (an API that names its fields otherwise passes its own)."""
    parts = [
        f"{where(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}"
        for err in islice(errors, 5)
    ]
    return "; ".join(parts) or "invalid request"


def error_of(exc: BaseException) -> HttpError | None:
    """The answer to one of our errors or to the database or Redis being down; None for
    anything else. One of ours that answers 500 (storage refusing a write, say) is reported
    to error tracking, as an unexpected error is (`_unexpected`); a 503 is not."""
    if isinstance(exc, MediagenError):
        if exc.limit is not None:
            metrics.rate_limited(exc.limit)
        if exc.status_code == 500:
            sentry.capture(exc)
        return HttpError(exc.status_code, exc.message, exc.code, None, exc.headers, exc.details)
    unavailable: ServiceUnavailableError | None = None
    if _database_down(exc):
        log.warning("database unavailable: %s", exc)
        unavailable = DatabaseUnavailableError(
            "the database is unavailable; try again shortly", UNAVAILABLE_RETRY_AFTER
        )
    elif isinstance(exc, _REDIS_DOWN):
        log.warning("redis unavailable: %s", exc)
        unavailable = RedisUnavailableError(
            "Redis is unavailable; try again shortly", UNAVAILABLE_RETRY_AFTER
        )
    if unavailable is not None:
        return HttpError(503, unavailable.message, unavailable.code, None, unavailable.headers)
    return None


def error_response(exc: BaseException) -> JSONResponse | None:
    """`error_of(exc)` in mediagen's own shape (the fast paths, which run outside FastAPI's
    handlers and serve only mediagen's own API, answer with this)."""
    error = error_of(exc)
    return None if error is None else render(error)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette names only the first matching
    route's, which is wrong where two routes share a path (GET and DELETE of a job)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(MediagenError)
    async def _mediagen(request: Request, exc: MediagenError) -> Response:
        error = error_of(exc)
        assert error is not None
        return _rendered(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return _rendered(request, HttpError(422, describe(errors), "validation_error", errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _rendered(request, HttpError(exc.status_code, str(exc.detail), code, None, headers))

    async def _unexpected(request: Request, exc: Exception) -> Response:
        error = error_of(exc)
        if error is None:
            log.exception("unhandled error")
            sentry.capture(exc)
            error = HttpError(500, "internal server error", "internal_error")
        return _rendered(request, error)

    # Registered for the database's and Redis's exception types themselves, the handler runs
    # in Starlette's ExceptionMiddleware, which answers and keeps the connection; the catch-all
    # `Exception` handler runs in ServerErrorMiddleware, which re-raises and so drops a
    # keep-alive client.
    for exc_type in (*_DB_DOWN, OperationalError, *_REDIS_DOWN):
        app.add_exception_handler(exc_type, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
