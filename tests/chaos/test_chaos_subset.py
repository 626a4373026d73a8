"""A short chaos run inside the normal test suite: S1 (kill -9 pool children mid-step), S5
(Redis down while jobs are POSTed) and S8 (broker redeliveries and re-published steps), 60 jobs
each, about three minutes on a 2-core machine.

It starts its own stack (private Postgres, Redis, fake Replicate, API, two workers, beat) and
uses none of tests/conftest.py's session fixtures; every process it starts is stopped by pid
however the test ends. The full suite is `python -m tests.chaos` (docs/chaos.md).
"""

from __future__ import annotations

import pytest

from tests.chaos.procs import stop_all
from tests.chaos.runner import run_scenario, stack
from tests.chaos.scenarios import SCENARIOS
from tests.chaos.stack import Timings

JOBS = 60
SUBSET = ("S1", "S5", "S8")


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_chaos_subset() -> None:
    outcomes = []
    try:
        async with stack(Timings()) as the_stack:
            for key in SUBSET:
                outcomes.append(await run_scenario(the_stack, SCENARIOS[key], JOBS))
    finally:
        stop_all()  # idempotent; the context manager already did it unless it was cut short
    report = "\n".join(
        outcome.line() + "".join(f"\n    ! {p}" for p in outcome.problems) for outcome in outcomes
    )
    print(report)
    problems = [p for outcome in outcomes for p in outcome.problems]
    assert not problems, report
    assert [o.key for o in outcomes] == list(SUBSET)
    assert all(o.accepted == JOBS and o.lost == 0 and o.duplicated == 0 for o in outcomes)
