"""The common submit and status requests, answered before FastAPI's per-request machinery.

FastAPI resolves dependencies, validates parameters and serialises answers generically. For a
request whose real work is one INSERT or one SELECT, that machinery costs more than the work:
measured on our machines, a FastAPI route with one dependency and a UUID path parameter costs
about 60 µs more per request than the same code as a plain ASGI handler, which is as much as the
SELECT it serves. This middleware answers the common case of the two hot endpoints itself, with
the same model, caller rule (`mediagen.keys.auth.identify`), rate limiter, services and JSON,
and hands everything else to the documented FastAPI routes (`mediagen.jobs.router`), which stay
the reference implementation:

- `POST /api/v1/generate` with a JSON body that validates, no Idempotency-Key and no webhook,
  from a caller who may submit and is within the rate limit;
- `GET /api/v1/status/{id}` for a canonical UUID of a job the caller owns.

Anything else (an invalid body, a missing or bad key, an unknown job, a rate-limit refusal, an
error before any write) goes to the FastAPI route, with the body replayed, which answers it
exactly as documented. The hand-over happens only before anything is written, so no request is
carried out twice. `FAST_PATHS=false` turns all of this off.
"""

from __future__ import annotations

import re
import uuid

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediagen.errors_http import error_response
from mediagen.jobs import repository as repo
from mediagen.jobs import service
from mediagen.jobs.payloads import status_response
from mediagen.jobs.schemas import GenerateRequest
from mediagen.keys.auth import identify
from mediagen.keys.owners import owner_id
from mediagen.observability.http import ROUTE

GENERATE = "/api/v1/generate"
STATUS = re.compile(
    r"/api/v1/status/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)

STATUS_ROUTE = "/api/v1/status/{job_id}"


class _Defer(Exception):
    """Not the common case: let the FastAPI route answer."""


class FastPaths:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == GENERATE:
                scope[ROUTE] = GENERATE  # the route template, for metrics and the access log
                await self._generate(scope, receive, send)
                return
            if method == "GET" and (match := STATUS.fullmatch(path)):
                scope[ROUTE] = STATUS_ROUTE
                await self._status(scope, receive, send, uuid.UUID(match.group(1)))
                return
        await self.app(scope, receive, send)

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        body: bytes | None = None
        try:
            if b"idempotency-key" in headers or not headers.get(b"content-type", b"").startswith(
                b"application/json"
            ):
                raise _Defer
            body = await _read_body(receive)
            state = scope["app"].state
            owner = await identify(state, _authorization(scope))
            try:
                request = GenerateRequest.model_validate(orjson.loads(body))
            except (orjson.JSONDecodeError, ValidationError):
                raise _Defer from None
            if request.webhook is not None:
                raise _Defer
            state.rate_limiter.check(owner)
        except Exception:  # _Defer, a refusal, or an error before any write
            await self.app(scope, receive if body is None else _replay(body, receive), send)
            return
        try:  # nothing is handed over from here: the job may already exist
            job_id = await service.create_job(
                request,
                state.settings,
                state.outbox,
                owner,
                state.catalog,
                schemas=state.input_schemas,
            )
        except Exception as exc:
            response = error_response(exc)
            if response is None:
                raise
            await response(scope, receive, send)
            return
        await service.json_response(service.accepted_body(job_id), 201)(scope, receive, send)

    async def _status(self, scope: Scope, receive: Receive, send: Send, job_id: uuid.UUID) -> None:
        try:
            state = scope["app"].state
            owner = await identify(state, _authorization(scope))
            state.read_limiter.check(owner)
            row = await repo.status_row(job_id, owner_id(owner))
            if row is None:
                raise _Defer
            body = await status_response(job_id, row, state.storage)
        except Exception:  # the route answers it (404, 401, 429, 503...) as documented
            await self.app(scope, receive, send)
            return
        await service.json_response(body)(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    """The `Authorization` header as the route reads it (the first one)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Defer  # the client went away; the route sees the same
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` again, starting with the body already read."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
