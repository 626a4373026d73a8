"""The worker's HTTP port (WORKER_METRICS_PORT), served by its main process from a thread.

- `GET /livez`: 200 while the process answers (no I/O): a liveness probe.
- `GET /readyz`: 200 when the worker can take work: its heartbeat is fresh and its consumer is
  connected to the broker (`mediagen.worker`); 503 otherwise. `{"status", "detail"}`, the
  detail one line saying why.
- `GET /metrics` (and `/`): Prometheus metrics (`mediagen.observability.metrics`), only with
  METRICS_ENABLED, and with `Authorization: Bearer <METRICS_TOKEN>` when that is set.

The probes need no token: an orchestrator's probe carries no credentials, and they say nothing
a scrape token protects. So the port serves them even with METRICS_ENABLED=false; only
WORKER_METRICS_PORT=0 closes it.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from mediagen.observability.metrics import authorized, exposition

Readiness = Callable[[], tuple[bool, str]]
# Copied for each answer: wsgiref adds Content-Length to the list it is given.
_TEXT = (("Content-Type", "text/plain"),)
_JSON = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _status(ok: bool, detail: str | None = None) -> list[bytes]:
    body: dict[str, str] = {"status": "ok" if ok else "unavailable"}
    if detail is not None:
        body["detail"] = detail
    return [json.dumps(body).encode() + b"\n"]


def _app(token: SecretStr, ready: Readiness, metrics_on: bool) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/livez":
            start_response("200 OK", [*_JSON])
            return _status(True)
        if path == "/readyz":
            try:
                ok, detail = ready()
            except Exception as exc:  # a probe must answer, whatever broke
                ok, detail = False, f"readiness check failed ({type(exc).__name__})"
            start_response("200 OK" if ok else "503 Service Unavailable", [*_JSON])
            return _status(ok, detail)
        if path not in ("/", "/metrics") or not metrics_on:
            start_response("404 Not Found", [*_TEXT])
            return [b"not found\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [*_TEXT, ("WWW-Authenticate", "Bearer")])
            return [b"metrics need the bearer token (METRICS_TOKEN)\n"]
        body = exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]

    return app


def serve(host: str, port: int, token: SecretStr, ready: Readiness, metrics_on: bool) -> WSGIServer:
    """Serve the probes, and the metrics when `metrics_on`, on `host:port` from a daemon
    thread. Raises OSError if the port is taken."""
    app = _app(token, ready, metrics_on)
    server = make_server(host, port, app, _ThreadingServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="mediagen-exporter", daemon=True).start()
    return server
