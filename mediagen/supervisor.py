"""What `mediagen run` runs, and how it keeps it running: each process's command (the API
under uvicorn, a Celery worker consuming every queue, beat), the embedded Postgres and Redis
when DATABASE_URL / REDIS_URL are unset, each service's metrics directory, and the
supervision: a process that exits is started again (jobs are safe in Postgres meanwhile),
unless it keeps dying; SIGHUP reaches every process (the models file is read again).

Like `mediagen.cli`, it imports nothing of the server at the top: the client's commands must
work where only the client is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mediagen import extras

if TYPE_CHECKING:
    from mediagen.config import Settings

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def api_cmd(settings: Settings, workers: int | None = None) -> list[str]:
    workers = workers or settings.web_concurrency
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "mediagen.main:app",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--no-access-log",
        # The app believes forwarded headers itself (FORWARDED_ALLOW_IPS, mediagen.proxy).
        "--no-proxy-headers",
    ]
    if settings.debug:  # auto-reload runs one process
        return [*cmd, "--reload", "--reload-dir", "mediagen"]
    return cmd + (["--workers", str(workers)] if workers > 1 else [])


def worker_cmd(settings: Settings, beat: bool) -> list[str]:
    from mediagen.broker import QUEUES

    level = "DEBUG" if settings.debug else settings.log_level
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mediagen.worker",
        "worker",
        "-P",
        "threads",
        "-c",
        str(settings.worker_concurrency),
        "-Q",
        ",".join(QUEUES),
        "--loglevel",
        level,
        "-n",
        f"mediagen-{os.getpid()}@%h",
    ]
    if beat:
        schedule = settings.embedded_data_dir / "celerybeat-schedule"
        cmd += ["-B", "-s", str(schedule)]
    return cmd


def beat_cmd(settings: Settings) -> list[str]:
    schedule = settings.embedded_data_dir / "celerybeat-schedule"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mediagen.worker",
        "beat",
        "-s",
        str(schedule),
        "--loglevel",
        settings.log_level,
    ]


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[dict[str, str]]:
    """The DATABASE_URL/REDIS_URL to use: configured ones, or embedded servers for the rest."""
    env: dict[str, str] = {}
    if settings.database_url and settings.redis_url:
        yield env
        return
    extras.require(
        "embedded",
        "mediagen run without DATABASE_URL and REDIS_URL",
        alternative="set both (a Postgres and a Redis of your own)",
    )
    from mediagen.embedded import EmbeddedServices

    data_dir = settings.embedded_data_dir.resolve()
    print(f"mediagen: starting embedded Postgres and Redis in {data_dir}", flush=True)
    with EmbeddedServices(data_dir) as services:
        given = settings.database_url, settings.redis_url
        database, redis = (url.get_secret_value() if url else None for url in given)
        env["DATABASE_URL"] = database or services.database_url
        env["REDIS_URL"] = redis or services.redis_url
        env_file = settings.embedded_env_file.resolve()
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        try:
            yield env
        finally:
            env_file.unlink(missing_ok=True)


def metrics_dir(settings: Settings, service: str) -> dict[str, str]:
    """A fresh multiprocess metrics directory for `service` (mediagen.observability.metrics),
    `<PROMETHEUS_MULTIPROC_DIR or EMBEDDED_DATA_DIR/metrics>/<service>`, emptied as the service
    starts (what prometheus-client asks): the processes of one service add up, two services
    never mix. Two `mediagen api` (or `worker`) on one machine need different directories."""
    from mediagen.observability.metrics import MULTIPROC_ENV

    if not settings.metrics_enabled:
        return {}
    base = os.environ.get(MULTIPROC_ENV) or str(settings.embedded_data_dir / "metrics")
    path = (Path(base) / service).resolve()
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.mkdir(parents=True)
    except OSError:  # not writable here (a container's read-only work directory)
        path = Path(tempfile.mkdtemp(prefix=f"mediagen-metrics-{service}-"))
    return {MULTIPROC_ENV: str(path)}


def supervise(
    settings: Settings, commands: Sequence[list[str]], envs: Sequence[Mapping[str, str]]
) -> int:
    """Run each command with its environment until SIGINT or SIGTERM (or a process that keeps
    dying: MAX_RESTARTS in RESTART_WINDOW s); the exit code."""
    children = [
        subprocess.Popen(cmd, env=dict(env))  # noqa: S603
        for cmd, env in zip(commands, envs, strict=True)
    ]
    restarts: list[float] = []
    print(
        f"mediagen: API on http://{settings.api_host}:{settings.api_port} "
        f"(docs at /docs), worker and sweeper started",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def reload(*_: object) -> None:
        """SIGHUP: each process reads the models file again. (Not an API under `--reload`:
        its supervisor would stop; its file check sees the change.)"""
        for index, child in enumerate(children):
            if child.poll() is None and not (index == 0 and settings.debug):
                child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, reload)
    code = 0
    while not stopping:
        for index, child in enumerate(children):
            if child.poll() is None:
                continue
            # A supervisor's job: start it again (jobs are safe in Postgres meanwhile),
            # unless it keeps dying, which needs a human.
            restarts = [t for t in restarts if time.monotonic() - t < RESTART_WINDOW]
            if len(restarts) >= MAX_RESTARTS:
                print(
                    f"mediagen: giving up after {MAX_RESTARTS} restarts in {RESTART_WINDOW:g}s",
                    file=sys.stderr,
                    flush=True,
                )
                code, stopping = child.returncode or 1, True
                break
            print(
                f"mediagen: process {child.pid} exited with {child.returncode}; restarting it",
                file=sys.stderr,
                flush=True,
            )
            restarts.append(time.monotonic())
            children[index] = subprocess.Popen(commands[index], env=dict(envs[index]))  # noqa: S603
        time.sleep(0.3)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return code
