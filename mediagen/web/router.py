"""Serve the web pages: `/` (the HTML, with the limits the form needs) and `/assets/*`, and the
API's documentation, `/docs` (Swagger UI) and `/redoc`, from files in the package.

The page talks to the same `/api/v1` as every client, with the caller's key kept in the
browser. Its Content-Security-Policy allows nothing from another origin but the storage that
serves the outputs (an S3-compatible endpoint), so a page that tried would fail loudly.

Every HTML page we serve gets its security headers here (`_secured`): no framing by another
site (`frame-ancestors 'none'`), nothing from another origin, no sniffing, no referrer. The
documentation pages run an inline script of FastAPI's, allowed by its hash (never
`'unsafe-inline'` for scripts); Redoc styles itself with inline `<style>` elements and searches
in a worker made from a `blob:`, so those are allowed there, and only there.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from mediagen.config import Settings

STATIC = Path(__file__).with_name("static")
router = APIRouter(include_in_schema=False)
# Where the documentation's scripts and styles are served from (`fastapi_offline` mounts them).
DOCS_ASSETS = "/static-offline-docs"
DOCS, REDOC, OAUTH2_REDIRECT = "/docs", "/redoc", "/docs/oauth2-redirect"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


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


def _page(settings: Settings, root: str) -> str:
    """The HTML with the form's limits inlined as JSON (data, not script: the CSP holds), its
    links and the API it calls under `root` (ROOT_PATH; empty at `/`)."""
    config = {
        "minDimension": settings.min_dimension,
        "maxDimension": settings.max_dimension,
        "maxPromptLength": settings.max_prompt_length,
        "root": root,
    }
    inline = json.dumps(config).replace("<", "\\u003c")
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return page.replace("{{ROOT}}", html.escape(root)).replace("{{CONFIG}}", inline)


def _secured(sources: str) -> dict[str, str]:
    """The headers of an HTML page of ours whose policy allows `sources` (directives) beyond
    nothing at all."""
    policy = (
        f"default-src 'none'; {sources}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def _headers(settings: Settings) -> dict[str, str]:
    """The page's: its own script and styles, outputs from where storage serves them."""
    media = _media_sources(settings)
    return _secured(
        "script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {media} data: blob:; media-src {media} blob:"
    )


def _docs_headers(page: HTMLResponse) -> dict[str, str]:
    """A documentation page's: our own assets, its inline scripts by their hashes (the page
    is FastAPI's, rendered per request), inline styles (Redoc's), the schema fetched and the
    operations tried on this origin, Redoc's search worker."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
    )
    return _secured(
        f"script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:"
    )


def _docs(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(_docs_headers(page))
    return page


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    """The page itself (built once per process: it depends only on the settings)."""
    state = request.app.state
    page: HTMLResponse | None = getattr(state, "web_page", None)
    if page is None:
        settings: Settings = state.settings
        root = request.scope.get("root_path", "")
        page = HTMLResponse(_page(settings, root), headers=_headers(settings))
        state.web_page = page
    return page


@router.get("/favicon.ico")
async def favicon(request: Request) -> RedirectResponse:
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}/assets/icon.svg", status_code=308)


# --- the API's documentation (what `fastapi_offline` would serve, with our headers) ----------
@router.get(DOCS, response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    root = request.scope.get("root_path", "")
    return _docs(
        get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
    )


@router.get(OAUTH2_REDIRECT, response_class=HTMLResponse)
async def swagger_ui_redirect() -> HTMLResponse:
    return _docs(get_swagger_ui_oauth2_redirect_html())


@router.get(REDOC, response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    app = request.app
    root = request.scope.get("root_path", "")
    return _docs(
        get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            with_google_fonts=False,
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )
    )


def install(app: FastAPI) -> None:
    """The page, its assets and the documentation pages (the app is made without
    `fastapi_offline`'s own, which carry no security headers; its assets stay mounted)."""
    app.include_router(router)
    app.mount("/assets", StaticFiles(directory=STATIC), name="assets")
