"""Errors under `/v1` as Replicate's clients read them: problem details
(`application/problem+json`, `{type, title, detail, status}`), registered with
`mediagen.errors_http` for the prefix when the adapter is installed (`router.install`).

A body over MAX_BODY_BYTES is refused before routing (`mediagen.limits.body`), in mediagen's own
shape, as on every path."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse

from mediagen.errors_http import HttpError

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
