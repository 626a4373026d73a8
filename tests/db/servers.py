"""Servers of the database tests' own, on loopback: a PgBouncer in front of the session's
Postgres, and a Postgres cluster a test may stop and start (`tests.chaos.procs.Postgres`).
Their ports come from a small range of their own when it has a free one (PORTS), else any free
port, so that they never meet the servers other test runs on the machine start."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.chaos.procs import Postgres, Proc, _pg_user, wait_until
from tests.support import free_port

POSTGRES_PORTS = range(5440, 5450)
PGBOUNCER_PORTS = range(6440, 6450)


def port_in(ports: range) -> int:
    """The first port of `ports` nothing listens on, else any free port."""
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A directory the servers' unprivileged user (when we are root) may enter."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class PgBouncer:
    """PgBouncer (Debian `pgbouncer`) on 127.0.0.1:`port` in `pool_mode` for every database of
    the Postgres at `upstream` ((host, port), or a unix socket's path), trust auth, at most
    `pool_size` server connections per database: fewer than a process's pool, so that its
    client connections take turns on them, as in production."""

    def __init__(
        self,
        root: Path,
        upstream: tuple[str, int] | str,
        *,
        pool_size: int = 3,
        pool_mode: str = "transaction",
    ) -> None:
        binary = shutil.which("pgbouncer")
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (scripts/ensure-tools.sh installs it)")
        self.port = port_in(PGBOUNCER_PORTS)
        if isinstance(upstream, str):  # .../.s.PGSQL.5432: its directory and port
            port = Path(upstream).name.rpartition(".")[2]
            target = f"host={Path(upstream).parent} port={port}"
        else:
            target = f"host={upstream[0]} port={upstream[1]}"
        users = root / "userlist.txt"
        users.write_text('"postgres" ""\n')
        config = root / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n* = {target}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\nlogfile =\npidfile =\n"
        )
        self.proc = Proc(
            "pgbouncer",
            [binary, str(config)],
            {"PATH": "/usr/bin:/bin"},
            root,
            root / "pgbouncer.log",
            _pg_user(),
        )

    def start(self) -> PgBouncer:
        self.proc.start()
        wait_until(lambda: _accepts(self.port), 15, "pgbouncer to listen", self.proc)
        return self

    def stop(self) -> None:
        self.proc.stop(timeout=10)

    def url(self, database: str) -> str:
        """DATABASE_URL of `database` through the pooler."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


def own_postgres(root: Path) -> Postgres:
    """A new cluster in `root/pg` on a port of its own, not yet started."""
    return Postgres(root, port_in(POSTGRES_PORTS), {"PATH": "/usr/bin:/bin"})
