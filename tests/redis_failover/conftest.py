"""The failover tests' own Redis servers (tests/redis_failover/servers.py), started once for the
package by the first test that asks, stopped at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_failover.servers import SentinelGroup


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()
