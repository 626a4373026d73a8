"""Process, pidfile and log helpers shared by the embedded servers."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from mediagen.embedded._constants import STOP_TIMEOUT

log = logging.getLogger(__name__)


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (both have import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"package {name!r} is not installed; it provides the embedded servers: "
            'pip install "mediagen[embedded]"'
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables (PGPORT, PGHOST, ... would redirect the tools)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _log_tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last lines written to a log file since `offset`, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until a process (not necessarily our child) has exited; True if it has.

    A zombie counts as gone: an orphaned server is reaped by PID 1, and some container inits
    take seconds to do that (psutil's own wait() waits for the reaping).
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.pid, os.WNOHANG)  # reap it if it is ours (e.g. we are PID 1)
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _terminate(proc: psutil.Process, what: str, sig: int = signal.SIGTERM) -> None:
    """Stop a process: `sig`, then SIGKILL if it is still there after STOP_TIMEOUT."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
    if not _wait_gone(proc, STOP_TIMEOUT):
        log.warning("%s (pid %s) ignored signal %s; killing it", what, proc.pid, sig)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        _wait_gone(proc, 5.0)


def _process_in(pid: int, name: str, cwd: Path) -> psutil.Process | None:
    """The live process `pid` if it is a `name` server working in `cwd` (ours), else None.

    Both servers chdir into their data directory, which identifies them even when the pid in a
    stale pidfile has been reused by some unrelated process.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if not proc.name().startswith(name):
            return None
        if Path(proc.cwd()).resolve() != cwd.resolve():
            return None
    except (psutil.Error, OSError):
        return None
    return proc


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged user a server runs as when we are root."""

    name: str
    uid: int
    gid: int
