"""A hostile HTTP server for the security tests: it plays the receiver (or the file host) that
wants to hurt whoever calls it. Raw asyncio, so it can misbehave below HTTP's rules.

    /drip         200 with a 1 MB Content-Length, then one byte every 0.5 s, for ever
    /silent       reads the request and never answers
    /gzip-bomb    200, Content-Encoding: gzip, ~1 MB on the wire that inflates to 1 GiB
    /gzip-image   the same, as Content-Type image/png (an "output" to download)
    /ok           204 at once (an ordinary receiver)
    /redirect     302 to the `to` query parameter

Every request is counted by path (`hits`), and how many connections are open now (`open`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

_MEMBER = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)
BOMB = _MEMBER * 64  # concatenated gzip members: 1 GiB once inflated
BOMB_INFLATED = 64 * 16 * 1024 * 1024


class HostileServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.open = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> HostileServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self._server is not None:  # closed on its loop: asyncio's Server is not thread-safe
            self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode()
            target = request_line.split(" ")[1]
            path = urlsplit(target).path
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            self.hits[path] += 1
            await self._answer(path, target, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, path: str, target: str, writer: asyncio.StreamWriter) -> None:
        if path == "/drip":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            while True:
                await writer.drain()
                writer.write(b".")
                await asyncio.sleep(0.5)
        elif path == "/silent":
            await asyncio.sleep(3600)
        elif path in ("/gzip-bomb", "/gzip-image"):
            kind = b"image/png" if path == "/gzip-image" else b"text/plain"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\n"
                         b"Content-Encoding: gzip\r\nContent-Length: "
                         + str(len(BOMB)).encode() + b"\r\n\r\n")
            writer.write(BOMB)
            await writer.drain()
        elif path == "/redirect":
            to = parse_qs(urlsplit(target).query).get("to", ["/ok"])[0]
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + to.encode()
                         + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
