"""Registers the `chaos` marker (the subset test runs by default; `-m "not chaos"` skips it)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: crash-and-recover runs against a whole stack of real processes"
    )
