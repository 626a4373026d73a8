"""Counting round trips on the wire: a TCP proxy between mediagen and Postgres or Redis.

A round trip is what a client sends before it next hears from the server: one query, one
pipeline, one batch of protocol messages. The proxy counts them per connection and labels each
connection with the name the client gave it (Postgres: `application_name` in the startup
packet; Redis: `CLIENT SETNAME`), so a test can say "the API's request path sent one statement
to Postgres and nothing to Redis" without any hook in the code under test.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field

_PG_NAME = re.compile(rb"application_name\x00([^\x00]*)\x00")
_REDIS_NAME = re.compile(rb"SETNAME\r\n\$\d+\r\n([^\r]*)\r\n", re.IGNORECASE)


@dataclass
class _Link:
    label: str = "?"
    waiting: bool = False  # the client has spoken and the server has not yet answered
    head: bytes = b""  # the start of what the client sent, until the label is found


@dataclass
class RoundTripCounter:
    """Listens on `port`, forwards to `upstream`; `counts` are round trips by label."""

    upstream: tuple[str, int] | str  # (host, port), or a unix socket's path
    kind: str  # "postgres" or "redis"
    counts: Counter[str] = field(default_factory=Counter)
    trace: list[tuple[str, bytes]] | None = None  # (label, first bytes) of each round trip
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    def since(self, before: Counter[str]) -> dict[str, int]:
        return {label: n - before.get(label, 0) for label, n in self.counts.items()
                if n - before.get(label, 0)}

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.upstream, str):
                server_r, server_w = await asyncio.open_unix_connection(self.upstream)
            else:
                server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        link = _Link()
        await asyncio.gather(self._pump(client_r, server_w, link, from_client=True),
                             self._pump(server_r, client_w, link, from_client=False),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link, from_client: bool) -> None:
        try:
            while data := await reader.read(65536):
                if from_client:
                    self._label(link, data)
                    if not link.waiting:
                        link.waiting = True
                        self.counts[link.label] += 1
                        if self.trace is not None:
                            self.trace.append((link.label, data[:300]))
                else:
                    link.waiting = False
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _label(self, link: _Link, data: bytes) -> None:
        if link.label != "?" or len(link.head) > 4096:
            return
        link.head += data
        pattern = _PG_NAME if self.kind == "postgres" else _REDIS_NAME
        if match := pattern.search(link.head):
            link.label = match.group(1).decode()


class Proxies:
    """Round-trip counters on an event loop of their own (so a test may block while the
    processes it started talk through them)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.counters: list[RoundTripCounter] = []

    def add(self, upstream: tuple[str, int] | str, kind: str) -> RoundTripCounter:
        counter = RoundTripCounter(upstream, kind)
        asyncio.run_coroutine_threadsafe(counter.start(), self.loop).result(10)
        self.counters.append(counter)
        return counter

    def close(self) -> None:
        for counter in self.counters:
            asyncio.run_coroutine_threadsafe(counter.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
