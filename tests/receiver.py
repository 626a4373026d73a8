"""A webhook receiver for tests: a real HTTP server (uvicorn in a thread) that records every POST
and answers what the test's `answer` says (204 by default)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import free_port, wait_for


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    hits: list[Hit] = field(default_factory=list)

    def at(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    def wait(self, path: str, count: int, timeout: float = 20) -> list[Hit]:
        """The hits at `path` once there are `count` of them."""
        wait_for(lambda: len(self.at(path)) >= count, timeout, what=f"{count} webhooks at {path}")
        return self.at(path)


Answer = Callable[[Receiver, Hit], Awaitable[Response] | Response]


def _no_content(_: Receiver, __: Hit) -> Response:
    return Response(status_code=204)


def receiver_app(rec: Receiver, answer: Answer = _no_content) -> Starlette:
    """The receiver's application: each POST to any path is recorded (as a Hit) before
    `answer` is asked for the response. Also served on its own by tests/rehearsal."""

    async def hook(request: Request) -> Response:
        hit = Hit(request.url.path, dict(request.headers), await request.body())
        rec.hits.append(hit)
        response = answer(rec, hit)
        return response if isinstance(response, Response) else await response

    return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])


@contextmanager
def receiving(answer: Answer = _no_content) -> Iterator[Receiver]:
    """A receiver on a free loopback port for as long as the block runs; each POST to any path
    is recorded (as a Hit) before `answer` is asked for the response."""
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}")
    app = receiver_app(rec, answer)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, what="webhook receiver")
        yield rec
    finally:
        server.should_exit = True
        thread.join(10)
