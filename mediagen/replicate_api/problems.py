"""Errors under `/v1` as Replicate's clients read them: problem details
(`application/problem+json`, `{type, title, detail, status}`), registered with
`mediagen.errors_http` for the prefix when the adapter is installed (`router.install`).

A body over MAX_BODY_BYTES is refused before routing (`mediagen.limits.body`), in mediagen's own
shape, as on every path."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from mediagen.errors_http import HttpError
from mediagen.replicate_api.schemas import Problem

_KEPT_HEADERS = ("retry-after", "www-authenticate", "allow")


def render(error: HttpError) -> JSONResponse:
    """`error` as a problem: its code names its `type`, its status its `title`."""
    try:
        title = HTTPStatus(error.status).phrase
    except ValueError:
        title = "Error"
    problem = {
        "type": f"urn:mediagen:error:{error.code}",
        "title": title,
        "detail": error.detail,
        "status": error.status,
    }
    headers = {k: v for k, v in (error.headers or {}).items() if k.lower() in _KEPT_HEADERS}
    return JSONResponse(
        problem, status_code=error.status, headers=headers, media_type="application/problem+json"
    )


_PROBLEM = {"schema": Problem.model_json_schema()}
_TOO_LARGE = {
    "schema": {
        "type": "object",
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
        "required": ["detail", "code"],
    }
}


def responses(
    *codes: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a `/v1` route's errors `codes`, and of those `described` in
    their own words (all problem details)."""
    described = described or {}
    text = {
        400: "The body could not be read, or the Host is not served here (ALLOWED_HOSTS).",
        401: "A valid API token is required.",
        404: "Not found (or not yours).",
        422: "The request is invalid.",
        413: "The request body is too large.",
        429: "Rate limited or too many predictions running; see Retry-After.",
        503: "The database or Redis is unavailable; see Retry-After.",
    }
    found: dict[int | str, dict[str, Any]] = {
        code: {
            "description": text[code],
            # A body over MAX_BODY_BYTES is refused before routing, in mediagen's own shape.
            "content": {"application/json": _TOO_LARGE}
            if code == 413
            else {"application/problem+json": _PROBLEM},
        }
        for code in codes
    }
    for code, words in described.items():
        found[code] = {"description": words, "content": {"application/problem+json": _PROBLEM}}
    return found
