"""The one place where errors become HTTP answers: `{detail, code, errors?}`, and under `/v1`
(Replicate's API, `mediagen.replicate_api`) the same errors as Replicate shapes them: problem
details (`application/problem+json`, `{type, title, detail, status}`)."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from tortoise.exceptions import DBConnectionError, OperationalError

from mediagen.errors import DatabaseUnavailableError, MediagenError
from mediagen.observability import metrics

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


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, _DB_DOWN):
        return True
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, _DB_DOWN)


def _error(
    http_status: int,
    detail: str,
    code: str,
    errors: Any = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> JSONResponse:
    """`{detail, code, errors?, ...fields}`: fields carry an error's details (a 409's `status`)."""
    body: dict[str, Any] = {"detail": detail, "code": code, **jsonable_encoder(fields)}
    if errors is not None:
        body["errors"] = jsonable_encoder(errors)
    return JSONResponse(body, status_code=http_status, headers=headers)


REPLICATE_PREFIX = "/v1"
_KEPT_HEADERS = ("retry-after", "www-authenticate", "allow")


def _shaped(request: Request, response: JSONResponse) -> JSONResponse:
    """`response` as Replicate's clients read errors when the request was under `/v1`."""
    path = request.url.path
    if path != REPLICATE_PREFIX and not path.startswith(REPLICATE_PREFIX + "/"):
        return response
    status = response.status_code
    body = json.loads(bytes(response.body))
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    problem = {
        "type": f"urn:mediagen:error:{body.get('code', 'error')}",
        "title": title,
        "detail": str(body.get("detail", title)),
        "status": status,
    }
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return JSONResponse(
        problem, status_code=status, headers=headers, media_type="application/problem+json"
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(exc: BaseException) -> JSONResponse | None:
    """The answer to one of our errors or to the database being down; None for anything else.
    (The fast paths, which run outside FastAPI's handlers, answer with this too.)"""
    if isinstance(exc, MediagenError):
        if exc.limit is not None:
            metrics.rate_limited(exc.limit)
        return _error(exc.status_code, exc.message, exc.code, None, exc.headers, **exc.details)
    if _database_down(exc):
        log.warning("database unavailable: %s", exc)
        err = DatabaseUnavailableError("the database is unavailable; try again shortly")
        return _error(503, err.message, err.code, headers={"Retry-After": "5"})
    return None


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
    async def _mediagen(request: Request, exc: MediagenError) -> JSONResponse:
        response = error_response(exc)
        assert response is not None
        return _shaped(request, response)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return _shaped(request, _error(422, _describe(errors), "validation_error", errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _shaped(request, _error(exc.status_code, str(exc.detail), code, headers=headers))

    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        response = error_response(exc)
        if response is not None:
            return _shaped(request, response)
        log.exception("unhandled error")
        return _shaped(request, _error(500, "internal server error", "internal_error"))

    # Registered for the database's exception types themselves, the handler runs in Starlette's
    # ExceptionMiddleware, which answers and keeps the connection; the catch-all `Exception`
    # handler runs in ServerErrorMiddleware, which re-raises and so drops a keep-alive client.
    for exc_type in (*_DB_DOWN, OperationalError):
        app.add_exception_handler(exc_type, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
