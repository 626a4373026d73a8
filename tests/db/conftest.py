"""The database tests' PgBouncer: one per module that asks, in front of the session's Postgres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import POSTGRES
from tests.db.servers import PgBouncer, scratch_dir


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, 3 server connections per database."""
    with scratch_dir("mediagen-pgbouncer-") as root:
        server = PgBouncer(root, POSTGRES.upstream).start()
        try:
            yield server
        finally:
            server.stop()
