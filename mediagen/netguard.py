"""Outbound HTTP to addresses a client or a provider chose, without letting them reach inside.

`pinned_urls` resolves a URL's host once, refuses it if any address is private, loopback,
link-local, reserved or multicast (IPv4-mapped IPv6 included), and returns the URL with the
host replaced by each checked address: the caller connects to exactly what was checked (no DNS
rebinding in between), sending the original host in `Host` and SNI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURLError(ValueError):
    """The URL is not http(s), or it resolves to an address we must not call: permanent."""


class ResolveError(OSError):
    """The host did not resolve (now): worth another try later."""


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def pinned_urls(
    url: str, *, allow_private: bool = False, allow_hosts: Collection[str] = ()
) -> list[httpx.URL]:
    """`url` with its host replaced by each checked address (see module docstring).

    `allow_private` or a host in `allow_hosts` skips the address check (local testing)."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeURLError(f"refusing {url!r}: not an http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parsed.host, port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise ResolveError(f"cannot resolve {parsed.host}: {exc}") from exc
    found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    addresses = list(dict.fromkeys(found))
    if not addresses:
        raise ResolveError(f"cannot resolve {parsed.host}: no address")
    if not (allow_private or parsed.host in allow_hosts):
        for address in addresses:
            if not is_public(address):
                raise UnsafeURLError(f"refusing {parsed.host}: it resolves to non-public {address}")
    return [parsed.copy_with(host=str(address)) for address in addresses]
