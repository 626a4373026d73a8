"""The API behind a reverse proxy or load balancer: whom to believe about the client, and the
path prefix it is reached under.

FORWARDED_ALLOW_IPS: a request's X-Forwarded-For and X-Forwarded-Proto are believed only when
the connection comes from one of these peers (uvicorn's own rule and code,
`ProxyHeadersMiddleware`, applied by the app itself so it holds however the app is served and
whatever `.env` says). Then the client address (the access log's `client`) and the scheme of
the URLs the API builds (`mediagen.base_url`) are the ones the proxy saw; from anyone else the
headers are ignored, so a client cannot pass itself off as another address or scheme.

ROOT_PATH: the prefix clients reach the API under (`/mediagen`). A proxy may strip it or pass
it on; both work. Two layers see to it:
- `StripRootPath`, outermost, takes the prefix off the path when it is there, so everything of
  ours that looks at paths (the fast paths, the body limits, the access log) sees the paths it
  knows, as without a prefix.
- `RootPath`, innermost, just before routing, puts the prefix back as ASGI has it: `root_path`
  set and `path` starting with it. Starlette then routes, mounts (`/media`, `/assets`) and
  builds `request.url` / `request.base_url` under the prefix, and FastAPI lists it in the
  OpenAPI `servers`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from mediagen.config import Settings

_PATHS = ("http", "websocket")


def route_path(scope: Scope) -> str:
    """The request's path without the prefix (what the routes are written for)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


class StripRootPath:
    """Outermost: the path without the prefix, however the proxy forwarded it."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in _PATHS:
            path: str = scope["path"]
            if path == self.root or path.startswith(self.root + "/"):
                scope["path"] = path[len(self.root) :] or "/"
                raw = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.startswith(self.root.encode()):
                    scope["raw_path"] = raw[len(self.root) :] or b"/"
        await self.app(scope, receive, send)


class RootPath:
    """Innermost: `root_path` set and the path under it, as the ASGI spec has them."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in _PATHS:
            scope["root_path"] = self.root
            scope["path"] = self.root + scope["path"]
            raw = scope.get("raw_path")
            if isinstance(raw, bytes):
                scope["raw_path"] = self.root.encode() + raw
        await self.app(scope, receive, send)


def install_root_path(app: FastAPI, settings: Settings) -> None:
    """`RootPath`, innermost: call before any other middleware is added."""
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)


def install_outer(app: FastAPI, settings: Settings) -> None:
    """Around the request id, the access log and all inside (only tracing's server span is
    outside it): the forwarded headers of trusted peers, then the prefix taken off the path."""
    build = app.build_middleware_stack
    root, trusted = settings.root_path, settings.forwarded_allow_ips
    if root:
        _check_prefix(app, root)

    def build_behind_proxy() -> ASGIApp:
        inner = build()
        if root:
            inner = StripRootPath(inner, root)
        # Its own type names (uvicorn's) differ from Starlette's; the ASGI protocol is the same.
        return ProxyHeadersMiddleware(inner, trusted_hosts=trusted)  # type: ignore[arg-type,return-value]

    app.build_middleware_stack = build_behind_proxy  # type: ignore[method-assign]


def _check_prefix(app: FastAPI, root: str) -> None:
    """A prefix that begins one of the API's own paths (`/api`, `/media`) would be taken off
    requests meant for that path: refused at start."""
    own = [*app.openapi()["paths"], *(getattr(route, "path", "") for route in app.routes)]
    for path in own:
        if path == root or path.startswith(root + "/"):
            raise ValueError(f"ROOT_PATH {root!r} is the start of the API's own path {path!r}")
