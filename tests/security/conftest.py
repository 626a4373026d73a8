"""The hostile side of the security tests: a real server of ours that misbehaves on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.fakes.hostile import HostileServer


@pytest.fixture(scope="session")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


def mediagen_cli(env: dict[str, str], *args: str) -> str:
    """`mediagen ...` with `env` on top of the session's environment; its output."""
    result = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
