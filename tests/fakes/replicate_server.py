"""Entry point: `python -m tests.fakes.replicate_server --port N --latency 5` (see `replicate`)."""

from tests.fakes.replicate import FakeConfig, FakeReplicate, Stats, main

__all__ = ["FakeConfig", "FakeReplicate", "Stats", "main"]

if __name__ == "__main__":
    main()
