"""What the benchmarks share: fresh servers, processes on loopback, wrk, and a table printer."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Settings that would change what is measured if the caller's environment or .env set them.
MEDIAGEN_VARIABLES = (
    "PUBLIC_BASE_URL", "STORAGE_TYPE", "BUILTIN_LATENCY", "POLL_INTERVAL", "WORKER_CONCURRENCY",
    "DB_POOL_MAX", "AUTH_REQUIRED", "RATE_LIMIT_PER_MINUTE", "MAX_JOBS_IN_FLIGHT", "DEBUG",
    "REPLICATE_API_TOKEN", "BUILTIN_FAULT_INJECTION", "WEB_CONCURRENCY",
    "RATE_LIMIT_READS_PER_MINUTE", "MAX_STREAMS_PER_KEY", "MAX_STREAMS", "FAST_PATHS",
    "LOG_LEVEL", "LOG_FORMAT", "ACCESS_LOG", "LOG_PROMPTS", "METRICS_ENABLED", "METRICS_TOKEN",
    "WORKER_METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asyncpg_dsn(url: str) -> str:
    """A mediagen DATABASE_URL as asyncpg's connect() wants it."""
    for scheme in ("asyncpg://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme):]
    return url


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MEDIAGEN_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


class Procs:
    """Child processes in their own sessions, logging to files, all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: Sequence[str], env: dict[str, str], log: str,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        handle = (self.logs / log).open("wb")
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


async def wait_http(url: str, timeout: float = 60, ok: int = 500) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=2)).status_code < ok:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def servers(work: Path, database_url: str | None, redis_url: str | None) -> Iterator[tuple[str, str]]:
    """The given Postgres/Redis URLs, or a fresh embedded pair in `work/embedded`."""
    if database_url and redis_url:
        yield database_url, redis_url
        return
    from mediagen.embedded import EmbeddedServices

    shutil.rmtree(work / "embedded", ignore_errors=True)
    with EmbeddedServices(work / "embedded") as services:
        yield database_url or services.database_url, redis_url or services.redis_url


def ensure_wrk() -> str:
    """The `wrk` binary, installed from Debian's packages when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("bench: installing wrk (Debian package)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk is not installed and could not be installed")
    return found


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors

    def row(self) -> str:
        return f"{self.requests_per_s:9.0f} {self.p50_ms:8.2f} {self.p99_ms:8.2f}"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, script: Path, duration: float, connections: int, threads: int = 1) -> WrkResult:
    """Drive `url` with wrk and the Lua `script`; parse its --latency report."""
    out = subprocess.run(
        [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(rps, p50, p99, total, errors)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
