"""Which parts of a request are secrets, in one place, for wherever a request is recorded (trace
spans, error reports).

- Requests to us: a path may carry a capability (a Cog server's webhook URL ends in its
  prediction's token, its upload URLs carry the upload token) and so may a query (the `sig` of a
  signed `/media` or stream URL, a client's own `token`). `secrets_of` finds them from the
  request's path and query alone, so a request refused before any route ran (a 404, a 413) is
  redacted like any other.
- Headers: only those named in RECORDED_HEADERS are recorded (`recorded_headers`); any other
  may carry a credential (Authorization, a webhook's signature, a cookie, a proxy's token).
- Calls we make: only the scheme, host, port and path of the URL are recorded (`bare`): a
  query string may carry anything the URL's owner put there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Paths whose tail is a secret: `secret` is what is replaced, wherever in the path it occurs.
SECRET_PATHS = (
    re.compile(r"/webhooks/cog/[^/?#]+/(?P<secret>[^?#]+)"),  # {prediction}/{token}
    re.compile(r"/uploads/cog/(?P<secret>[^?#]+)"),  # {token}/{file}, and whatever follows
)
# Query parameters whose value is a secret (compared without case).
SECRET_QUERY_KEYS = frozenset(
    {
        "sig",
        "signature",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "secret",
        "password",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)


# Request headers recorded as they came (compared without case).
RECORDED_HEADERS = frozenset(
    {
        "accept",
        "content-length",
        "content-type",
        "host",
        "prefer",
        "user-agent",
        "x-request-id",
    }
)


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of `headers` that may be recorded (RECORDED_HEADERS)."""
    return {name: value for name, value in headers.items() if name.lower() in RECORDED_HEADERS}


def secrets_of(path: str, query: str = "") -> list[str]:
    """The secret parts of a request's path and query string (as sent and decoded), longest
    first, so that replacing them in turn never leaves a piece of one behind."""
    found: set[str] = set()
    for text in {path, unquote(path)}:
        for pattern in SECRET_PATHS:
            found.update(m.group("secret") for m in pattern.finditer(text) if m.group("secret"))
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() in SECRET_QUERY_KEYS and value:
            found.update({value, unquote(value)})
    for raw in query.split("&"):  # as sent, before parse_qsl decoded it
        name, _, value = raw.partition("=")
        if unquote(name).lower() in SECRET_QUERY_KEYS and value:
            found.add(value)
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every one of `secrets` replaced by REDACTED."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def bare(url: str) -> str:
    """An outgoing URL as recorded: scheme, host, port and path; no user, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
