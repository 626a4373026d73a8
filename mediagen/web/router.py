"""Serve the web page: `/` (the HTML, with the limits the form needs) and `/assets/*`.

The page talks to the same `/api/v1` as every client, with the caller's key kept in the
browser. Its Content-Security-Policy allows nothing from another origin but the storage that
serves the outputs (an S3-compatible endpoint), so a page that tried would fail loudly.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from mediagen.config import Settings

STATIC = Path(__file__).with_name("static")
router = APIRouter(include_in_schema=False)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _media_sources(settings: Settings) -> str:
    """Where outputs load from: this origin, the public media host (MEDIA_BASE_URL), and the
    S3 endpoint that presigned URLs point at."""
    sources = ["'self'"]
    if settings.media_base_url:
        sources.append(_origin(settings.media_base_url))
    if settings.storage_type == "s3":
        endpoint = settings.s3_endpoint_url
        sources.append(_origin(endpoint) if endpoint else "https://*.amazonaws.com")
    return " ".join(sources)


def _page(settings: Settings) -> str:
    """The HTML with the form's limits inlined as JSON (data, not script: the CSP holds)."""
    config = {
        "minDimension": settings.min_dimension,
        "maxDimension": settings.max_dimension,
        "maxPromptLength": settings.max_prompt_length,
    }
    inline = json.dumps(config).replace("<", "\\u003c")
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("{{CONFIG}}", inline)


def _headers(settings: Settings) -> dict[str, str]:
    media = _media_sources(settings)
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {media} data: blob:; media-src {media} blob:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    """The page itself (built once per process: it depends only on the settings)."""
    state = request.app.state
    page: HTMLResponse | None = getattr(state, "web_page", None)
    if page is None:
        settings: Settings = state.settings
        page = HTMLResponse(_page(settings), headers=_headers(settings))
        state.web_page = page
    return page


@router.get("/favicon.ico")
async def favicon() -> RedirectResponse:
    return RedirectResponse("/assets/icon.svg", status_code=308)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/assets", StaticFiles(directory=STATIC), name="assets")
