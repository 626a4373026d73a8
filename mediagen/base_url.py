"""The service's own absolute URLs in answers (`/v1`'s prediction, output and stream URLs, the
root a prediction's webhooks are written with, `/api/v1/jobs`'s `next`): the one place that
decides where they start.

PUBLIC_BASE_URL, when set, is that root, whatever the request says; its path, if any, is the
prefix the API is reached under (ROOT_PATH, `mediagen.proxy`), which relative URLs in answers
(local storage's `/media` links) start with too. Without it the request's
Host header is: any client can send any Host, so it must be a well-formed host name (or IP
literal) with an optional port, no longer than MAX_HOST, and one that ALLOWED_HOSTS lists;
anything else is 400 (`InvalidHostError`), never a URL to somewhere else. The scheme is the
request's as the ASGI server saw it (behind a proxy: what the server was told to trust).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from mediagen.config import Settings
from mediagen.errors import InvalidHostError

MAX_HOST = 255  # a DNS name is at most 253 characters; a port adds at most 6
# A host name (letters, digits, `-`, `_`, dots), an IPv4 address, or a bracketed IPv6 literal,
# then an optional port.
_HOST = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?)(?::[0-9]{1,5})?"
)


def public_root(settings: Settings) -> str:
    """PUBLIC_BASE_URL without its trailing `/` (empty when unset): where the URLs start that
    others call back without a request to go by (provider webhooks, Cog uploads, inputs)."""
    return settings.public_base_url.rstrip("/")


def service_root(request: Request) -> str:
    """The root our absolute URLs start with (`https://api.example.com`, no trailing `/`):
    PUBLIC_BASE_URL, else the request's own, once its Host is checked (400 if refused)."""
    settings: Settings = request.app.state.settings
    if settings.public_base_url:
        return public_root(settings)
    host = request.headers.get("host")
    if host is not None:
        check_host(host, settings.allowed_host_list)
    return str(request.base_url).rstrip("/")


def request_url(request: Request, **params: Any) -> str:
    """This request's URL under `service_root`, with `params` set in its query."""
    path = request.url.path
    root_path = request.scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]  # `service_root` ends with it (or stands for it)
    query = request.url.include_query_params(**params).query
    return f"{service_root(request)}{path}?{query}" if query else f"{service_root(request)}{path}"


def absolute(url: str, root: str) -> str:
    """A URL of ours as answers give it, made absolute: a path (local storage's `/media`
    links, already under ROOT_PATH) is put on `root`'s scheme and host (`root` being
    `service_root` or PUBLIC_BASE_URL, whose own path is that same ROOT_PATH); a URL with a
    scheme (S3, a CDN) is left as it is."""
    if "://" in url:
        return url
    parts = urlsplit(root)
    return f"{parts.scheme}://{parts.netloc}{url}"


def check_host(host: str, allowed: list[str]) -> None:
    """Refuse a Host header that is malformed, too long, or not in `allowed` (ALLOWED_HOSTS:
    `*`, a name, or `.example.com` for that domain and every name under it)."""
    found = _HOST.fullmatch(host) if len(host) <= MAX_HOST else None
    if found is None:
        raise InvalidHostError("the Host header is not a valid host name")
    name = found.group("name").lower().rstrip(".")
    for pattern in allowed:
        if pattern == "*" or name == pattern.lstrip("."):
            return
        if pattern.startswith(".") and name.endswith(pattern):
            return
    raise InvalidHostError(f"Host {name!r} is not served here (ALLOWED_HOSTS)")
