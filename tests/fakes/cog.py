"""A Cog server's HTTP API, as little of it as mediagen calls, for tests that need a prediction
running on an endpoint but not a model (the real server is tests/cog_servers.py).

    GET  /health-check                 {"status": "READY"}
    GET  /openapi.json                 503, as a server without a schema answers
    PUT  /predictions/{id}             202 {"id", "status": "starting"}; the id and body kept
    POST /predictions/{id}/cancel      200 {}

It never runs anything and never calls back: the test plays the server's webhooks and uploads
itself, with what the server was given (`created`: prediction id -> request body). `on_put(id,
body)`, when given, runs before a PUT is answered (a webhook sent before the reply, say).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeCog:
    def __init__(self, on_put: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.created: dict[str, dict[str, Any]] = {}
        self.canceled: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health-check":
                    self._answer(200, {"status": "READY"})
                else:
                    self._answer(503, {"error": "OpenAPI schema not available"})

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                prediction = self.path.removeprefix("/predictions/")
                fake.created[prediction] = body
                if on_put is not None:
                    on_put(prediction, body)
                self._answer(202, {"id": prediction, "status": "starting"})

            def do_POST(self) -> None:
                prediction = self.path.removeprefix("/predictions/").removesuffix("/cancel")
                fake.canceled.append(prediction)
                self._answer(200, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def given(self, base: str) -> str:
        """The id the server was given for the prediction whose id starts with `base`."""
        found = [p for p in self.created if p == base or p.startswith(base + ".")]
        assert found, f"no prediction {base} was created: {list(self.created)}"
        return found[-1]

    def __enter__(self) -> FakeCog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
