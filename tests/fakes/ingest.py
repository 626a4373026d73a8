"""A loopback HTTP server that takes POSTs for a fake collector (tests/fakes/sentry.py,
tests/fakes/otlp.py): the body is read (and un-gzipped), `answer(path, headers, body)` says
what to reply, and the server runs on a free port while the block does."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port

# (status, content type, body); a status without a body ends with the headers.
Reply = tuple[int, str | None, bytes]
Answer = Callable[[str, Message, bytes], Reply]


@contextmanager
def ingesting(answer: Answer) -> Iterator[int]:
    """Serve `answer` on 127.0.0.1 while the block runs; yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            status, content_type, reply = answer(self.path, self.headers, body)
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            if content_type is not None:
                self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
