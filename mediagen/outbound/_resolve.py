"""Resolve a URL's host once, refuse it if any address is not public, and pin what was checked:
the caller connects to exactly the addresses judged here (no DNS rebinding in between)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection

import httpx

from mediagen.errors import OutboundError, RefusedAddressError
from mediagen.outbound._addresses import is_public


async def pinned_urls(
    url: str, *, allow_private: bool = False, allow_hosts: Collection[str] = ()
) -> list[httpx.URL]:
    """`url` with its host replaced by each checked address. `allow_private`, or the host in
    `allow_hosts`, skips the address check (local testing only).

    RefusedAddressError: not http(s), or an address that is not public (the address itself is
    not named: the message goes back to whoever chose the URL). OutboundError (retryable): the
    host does not resolve now."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise RefusedAddressError(f"invalid URL: {exc}", "invalid URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RefusedAddressError("not an http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parsed.host, port, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError) as exc:
        raise OutboundError(
            f"cannot resolve {parsed.host}", retryable=True, reason="cannot resolve the host"
        ) from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
    if not addresses:
        raise OutboundError(
            f"cannot resolve {parsed.host}", retryable=True, reason="cannot resolve the host"
        )
    checked = not (allow_private or parsed.host in allow_hosts)
    if checked and not all(is_public(address) for address in addresses):
        raise RefusedAddressError(
            f"{parsed.host} resolves to a non-public address", "resolves to a non-public address"
        )
    return [parsed.copy_with(host=str(address)) for address in addresses]
