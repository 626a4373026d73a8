"""A fake Replicate predictions API over real HTTP (see `server` for how to run it)."""

from tests.fakes.replicate.server import FakeReplicate, main
from tests.fakes.replicate.state import FakeConfig, Stats

__all__ = ["FakeConfig", "FakeReplicate", "Stats", "main"]
