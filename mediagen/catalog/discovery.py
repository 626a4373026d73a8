"""Cog endpoints found by DNS: an entry with `discover = "dns"` names a host (a Kubernetes
headless Service of GPU pods, say) whose every address is one server with the entry's slots.

`resolve` asks the event loop's `getaddrinfo` (a thread of the loop's executor: never blocking
DNS on the loop), `expand` turns a catalog as the file says into the one jobs run on: each such
entry becomes one `Endpoint` per address (`http://10.0.0.7:5000`, `http://[fd00::7]:5000`: the
entry's URL with the address for its host), after the entry's model's plain endpoints. An
address some other endpoint already has is left out (its slots would be counted twice).
`changes` says, in one line, what a new catalog changes (a reload's log line).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from mediagen.catalog.catalog import Catalog
from mediagen.catalog.routes import Endpoint, ModelRoute

# (host, port) -> its addresses, sorted; raises OSError (socket.gaierror) when it cannot.
Resolver = Callable[[str, int], Awaitable[list[str]]]
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_port(entry: Endpoint) -> tuple[str, int]:
    """What to resolve for an entry: its URL's host, and its port (or the scheme's)."""
    parts = urlsplit(entry.url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (IPv4 and IPv6), without duplicates, sorted."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(sockaddr[0]) for *_, sockaddr in found})


def address_url(url: str, address: str) -> str:
    """`url` with `address` for its host: same scheme, port and path (IPv6 in brackets, a
    zone's `%` escaped)."""
    parts = urlsplit(url)
    host = f"[{address.replace('%', '%25')}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def expand(spec: Catalog, addresses: Mapping[str, Sequence[str]]) -> tuple[Catalog, list[str]]:
    """The catalog `spec` (as read from the file) with each `discover` entry's addresses
    (`addresses`: by the entry's URL) as endpoints; and the addresses left out because another
    endpoint has them already, one message each."""
    taken = {endpoint.url for endpoint in spec.endpoints()}
    skipped: list[str] = []
    routes: list[ModelRoute] = []
    for route in spec.models():
        if not route.listed:  # the implied default: not the file's, never expanded
            continue
        found: list[Endpoint] = []
        for entry in route.discover:
            for address in addresses.get(entry.url, ()):
                url = address_url(entry.url, address)
                if url in taken:
                    skipped.append(f"{route.name}: {entry.url} gives {url}, already an endpoint")
                    continue
                taken.add(url)
                found.append(Endpoint(url, entry.slots))
        routes.append(replace(route, endpoints=(*route.endpoints, *found)) if found else route)
    return spec.with_routes(routes), skipped


def changes(old: Catalog, new: Catalog) -> list[str]:
    """What `new` changes from `old`, in words: models added, removed or changed otherwise
    (slots, deadline, schema...), endpoints added and removed, each with its model, and the
    default (empty: nothing)."""
    before = {route.name: route for route in old.models() if route.listed}
    after = {route.name: route for route in new.models() if route.listed}
    said: list[str] = []
    if added := sorted(after.keys() - before.keys()):
        said.append(f"models added: {', '.join(added)}")
    if removed := sorted(before.keys() - after.keys()):
        said.append(f"models removed: {', '.join(removed)}")
    was, now = _endpoints(before.values()), _endpoints(after.values())
    changed = sorted(
        name
        for name in before.keys() & after.keys()
        if replace(before[name], endpoints=()) != replace(after[name], endpoints=())
        or before[name].input_schema != after[name].input_schema
        or any(was[key] != now[key] for key in was.keys() & now.keys() if key[0] == name)
    )
    if changed:
        said.append(f"models changed: {', '.join(changed)}")
    if gained := sorted(now.keys() - was.keys()):
        said.append(f"endpoints added: {', '.join(f'{m} {url}' for m, url in gained)}")
    if lost := sorted(was.keys() - now.keys()):
        said.append(f"endpoints removed: {', '.join(f'{m} {url}' for m, url in lost)}")
    if (old.default.name, old.default.provider) != (new.default.name, new.default.provider):
        said.append(f"default: {new.default.name}")
    return said


def _endpoints(routes: Iterable[ModelRoute]) -> dict[tuple[str, str], Endpoint]:
    """Each route's endpoints by (model, URL)."""
    return {(route.name, e.url): e for route in routes for e in route.endpoints}
