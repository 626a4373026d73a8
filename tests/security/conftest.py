"""The hostile side of the security tests: a real server of ours that misbehaves on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.hostile import HostileServer


@pytest.fixture(scope="session")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()
