"""Run the fake Replicate: `FakeReplicate` in a background thread, or `main()` as a process.

with FakeReplicate(latency=0.3) as fake:        # binds a free port on 127.0.0.1
    settings = Settings(replicate_base_url=fake.url, replicate_api_token=fake.config.token)
    fake.configure(faults="429 times=1")          # or fake.config.latency = 1.0
    assert fake.stats.created == 1

python -m tests.fakes.replicate_server --port 8765 --latency 5 [--token T] [--secret whsec_..]
curl -X POST localhost:8765/_admin/config -d '{"latency": 2}'   # GET /_admin/stats, reset
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from tests.fakes.replicate.app import FakeState, create_app
from tests.fakes.replicate.state import FakeConfig, Stats


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)  # accept (queue) connections before uvicorn has started
    return sock


def _quiet_truncation(record: logging.LogRecord) -> bool:
    """Drop tracebacks of deliberate faults (truncated body, hang cut by shutdown)."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, ConnectionAbortedError | asyncio.CancelledError)


def _server(state: FakeState) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        backlog=4096,
    )
    logging.getLogger("uvicorn.error").addFilter(_quiet_truncation)
    return uvicorn.Server(config)


class FakeReplicate:
    """The fake server on a uvicorn thread; `config` and `stats` are live, shared objects."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host, self.port = host, port
        self.state = FakeState(FakeConfig(**config))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> FakeConfig:
        return self.state.config

    @property
    def stats(self) -> Stats:
        return self.state.stats

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base, as `REPLICATE_BASE_URL` wants it."""
        return f"{self.base_url}/v1"

    def configure(self, **values: Any) -> None:
        self.config.update(values)

    def reset(self) -> None:
        """Forget predictions and zero the counters (config stays)."""
        self.state.reset()

    def start(self) -> FakeReplicate:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _server(self.state)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-replicate", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake Replicate server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeReplicate:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Replicate predictions API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--secret", help="webhook secret whsec_... (default: random, printed)")
    parser.add_argument("--outputs", default="image/png", help="comma-separated media types")
    parser.add_argument("--faults", default="", help='global fault tag, e.g. "429 times=3"')
    args = parser.parse_args(argv)
    config = FakeConfig(
        token=args.token, latency=args.latency, outputs=args.outputs.split(","), faults=args.faults
    )
    if args.secret:
        config.webhook_secret = args.secret
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    print(
        f"fake replicate on http://{args.host}:{port}/v1 secret={config.webhook_secret}", flush=True
    )
    _server(FakeState(config)).run(sockets=[sock])


if __name__ == "__main__":
    main()
