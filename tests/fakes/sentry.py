"""A fake Sentry for the tests: a real HTTP server taking what sentry-sdk sends to a DSN's
envelope endpoint (`POST /api/<project>/envelope/`, gzip or not) and reading the envelopes:
a JSON header line, then items, each a JSON header line and a payload of the header's `length`
in bytes (or up to the next newline without one)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from tests.fakes.ingest import Reply, ingesting
from tests.support import wait_for

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

    def answer(path: str, headers: Message, body: bytes) -> Reply:
        match = ENVELOPE_PATH.match(path)
        if match is None:
            with sink.lock:
                sink.refused.append(path)
            return 404, None, b""
        header, items = parse(body)
        envelope = Envelope(match["project"], headers.get("X-Sentry-Auth", ""), body, header,
                            items)
        with sink.lock:
            sink.envelopes.append(envelope)
        return 200, "application/json", json.dumps({"id": header.get("event_id")}).encode()

    with ingesting(answer) as port:
        yield sink, f"http://public@127.0.0.1:{port}/1"
