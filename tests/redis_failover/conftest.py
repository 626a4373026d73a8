"""The failover tests' own Redis servers (tests/redis_failover/servers.py), started once for the
package by the first test that asks, stopped at the end of the session."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_failover.servers import HOST, TLS_PORT, PlainRedis, SentinelGroup, tls_server
from tests.stack import TMP


@pytest.fixture(scope="session", autouse=True)
def _redis_server() -> None:
    """The machine's redis-server (scripts/ensure-tools.sh installs it): missing, these tests
    skip, or fail under CI."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail("redis-server is not installed (Debian package redis-server)")
        pytest.skip("redis-server is not installed (Debian package redis-server)")


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def tls_redis() -> Iterator[tuple[str, Path]]:
    """A TLS-only Redis: (its rediss:// base URL, the CA file that verifies it)."""
    proc, ca_file = tls_server(TMP / "redis-failover" / "tls")
    try:
        yield f"rediss://{HOST}:{TLS_PORT}", ca_file
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def plain() -> Iterator[PlainRedis]:
    """A plain Redis of the package's own (tests may restart or flush it)."""
    server = PlainRedis()
    try:
        yield server
    finally:
        server.proc.stop(signal.SIGKILL)
