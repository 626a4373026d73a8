"""A fake Sentry for the tests: a real HTTP server taking what sentry-sdk sends to a DSN's
envelope endpoint (`POST /api/<project>/envelope/`, gzip or not) and reading the envelopes:
a JSON header line, then items, each a JSON header line and a payload of the header's `length`
in bytes (or up to the next newline without one)."""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port, wait_for

ENVELOPE_PATH = re.compile(r"^/api/(?P<project>\d+)/envelope/$")


@dataclass(frozen=True)
class Envelope:
    project: str
    auth: str  # the X-Sentry-Auth header
    raw: bytes  # decompressed: what a secret must never be found in
    header: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for head, body in self.items if head.get("type") == "event"]


def parse(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """An envelope's header and its items (item header, payload)."""
    line, _, rest = raw.partition(b"\n")
    header = json.loads(line)
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        head = json.loads(line)
        if "length" in head:
            body, rest = rest[: head["length"]], rest[head["length"]:]
            rest = rest.removeprefix(b"\n")
        else:
            body, _, rest = rest.partition(b"\n")
        items.append((head, body))
    return header, items


@dataclass
class Sentry:
    """What the fake Sentry received."""

    envelopes: list[Envelope] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # paths that are no envelope endpoint
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[Envelope]:
        with self.lock:
            return list(self.envelopes)

    def events(self) -> list[dict[str, Any]]:
        return [event for envelope in self.snapshot() for event in envelope.events()]

    def wait_event(self, match: Any, timeout: float = 20, what: str = "an event") -> dict[str, Any]:
        """The first event `match(event)` is true of, once it came."""
        found: list[dict[str, Any]] = []

        def came() -> bool:
            found[:] = [event for event in self.events() if match(event)]
            return bool(found)

        try:
            wait_for(came, timeout, what=what)
        except TimeoutError as exc:  # say what came instead
            came_instead = [(e.get("tags"), e.get("exception"), e.get("logentry"))
                            for e in self.events()]
            raise TimeoutError(f"{exc}; events: {came_instead}, refused: {self.refused}") from None
        return found[0]


@contextmanager
def receiving() -> Iterator[tuple[Sentry, str]]:
    """A fake Sentry on a free loopback port while the block runs: what it received, and a DSN
    for it (project 1, public key `public`)."""
    sink = Sentry()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            match = ENVELOPE_PATH.match(self.path)
            if match is None:
                with sink.lock:
                    sink.refused.append(self.path)
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            header, items = parse(body)
            envelope = Envelope(match["project"], self.headers.get("X-Sentry-Auth", ""), body,
                                header, items)
            with sink.lock:
                sink.envelopes.append(envelope)
            reply = json.dumps({"id": header.get("event_id")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink, f"http://public@127.0.0.1:{server.server_port}/1"
    finally:
        server.shutdown()
        server.server_close()
