"""Real Cog servers for the tests: Cog's own HTTP server (`cog` + `coglet` from PyPI, pinned in
tests/cog-requirements.txt) running the example model (examples/cog-model), or another model
folder (`CogServer.model`, e.g. tests/fakes/cog_models/), without Docker.

The virtualenv is made once per test session in pytest's temporary directory, with the project's
`uv` (fast; its cache makes a second session's install a copy). A server is started as Cog's
Dockerfile would run it, `python -m cog.server.http` with `COG_PREDICT_TYPE_STUB`, from the
model's directory and with the virtualenv's `bin` first on PATH (the server starts its worker
with the `python` it finds there); it is ready when `GET /health-check` says READY.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "cog-model"
REQUIREMENTS = ROOT / "tests" / "cog-requirements.txt"


@pytest.fixture(scope="session")
def cog_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the pinned Cog server and Pillow, made once per session."""
    venv = tmp_path_factory.mktemp("cog") / "venv"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "-r", str(REQUIREMENTS)], check=True)
    return venv


@dataclass
class CogServer:
    """One Cog server on a loopback port; `start`, `kill` and `start` again (same port)."""

    venv: Path
    log: Path
    port: int = field(default_factory=free_port)
    upload_url: str | None = None
    # The model's folder and its predictor (`file.py:Class`): the example model by default.
    model: Path = MODEL
    predictor: str = "predict.py:Predictor"
    popen: subprocess.Popen[bytes] | None = None
    model: Path = MODEL  # the model's folder: its predict.py (and a built image's .cog/)
    host: str = "127.0.0.1"  # a loopback address it listens on (`::1` too)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def _host(self) -> str:
        """The host as a URL (and coglet's --host) spells it: IPv6 in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def start(self, timeout: float = 30) -> CogServer:
        return self.launch().ready(timeout)

    def launch(self) -> CogServer:
        """Start the server without waiting for it (`ready`): several start side by side."""
        bin_dir = self.venv / "bin"
        command = [str(bin_dir / "python"), "-m", "cog.server.http", "--host", self._host]
        if self.upload_url:
            command += ["--upload-url", self.upload_url]
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "PORT": str(self.port), "COG_PREDICT_TYPE_STUB": self.predictor,
               "VIRTUAL_ENV": str(self.venv)}
        env.pop("PYTHONPATH", None)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(command, cwd=self.model, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self, timeout: float = 30) -> CogServer:
        """Return once the launched server's health check says READY."""
        assert self.popen is not None, "launch it first"
        deadline = time.monotonic() + timeout
        while self.health() != "READY":
            if self.popen.poll() is not None:
                raise RuntimeError(f"cog server exited ({self.popen.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cog server not READY after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def health(self) -> str | None:
        try:
            status = httpx.get(f"{self.url}/health-check", timeout=2).json()["status"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return str(status)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server and its worker process (one process group), and wait for it."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self.popen is not None:  # the worker may outlive its parent for a moment
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def predict(self, inputs: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """A prediction run synchronously (`POST /predictions`), outputs as data: URIs."""
        response = httpx.post(f"{self.url}/predictions", json={"input": inputs}, timeout=timeout)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def says(self, text: str) -> bool:
        """Whether the server's log has `text` (its JSON lines name every prediction)."""
        try:
            return text in self.log.read_text(errors="replace")
        except OSError:
            return False


@pytest.fixture(scope="module")
def cog_server(cog_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServer]:
    server = CogServer(cog_venv, tmp_path_factory.mktemp("cog-log") / "server.log").start()
    yield server
    server.stop()
