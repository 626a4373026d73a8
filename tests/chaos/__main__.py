"""`python -m tests.chaos [--scenarios S1,S5] [--jobs 200]`: run the chaos scenarios against a
whole stack of real processes; one line per scenario; exit status 1 if any promise broke."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import signal
import sys
import time
from types import FrameType

from tests.chaos.measure import Outcome
from tests.chaos.procs import stop_all
from tests.chaos.runner import run_scenario, stack
from tests.chaos.scenarios import SCENARIOS
from tests.chaos.stack import Timings


async def run(keys: list[str], jobs: int, seed: int, keep: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    timings = Timings()
    print(
        f"chaos: {jobs} jobs per scenario; LEASE_SECONDS={timings.lease_seconds:g} "
        f"SWEEP_INTERVAL={timings.sweep_interval:g} DISPATCH_GRACE={timings.dispatch_grace:g} "
        f"POLL_INTERVAL={timings.poll_interval:g} RETRY_MAX_DELAY={timings.retry_max_delay:g} "
        f"fake latency {timings.latency[0]:g}-{timings.latency[1]:g}s; T={timings.bound():g}s",
        flush=True,
    )
    async with stack(timings, keep=keep) as the_stack:
        for key in keys:
            started = time.monotonic()
            try:
                outcome = await run_scenario(the_stack, SCENARIOS[key], jobs, seed)
            except Exception as exc:  # e.g. a worker that does not start: this one line fails
                first = (str(exc).strip().splitlines() or [""])[0]
                outcome = Outcome(key, SCENARIOS[key].title)
                outcome.problems.append(f"could not run: {type(exc).__name__}: {first}")
            outcomes.append(outcome)
            print(f"{outcome.line()} [{time.monotonic() - started:.0f}s]", flush=True)
            for problem in outcome.problems:
                print(f"    ! {problem}", flush=True)
    return outcomes


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="e.g. S1,S5,S8")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per scenario")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep logs and data afterwards")
    args = parser.parse_args(argv)
    keys = [k.strip().upper() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown or args.jobs < 12:
        parser.error(f"unknown scenarios {unknown}" if unknown else "--jobs must be >= 12")
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        outcomes = asyncio.run(run(keys, args.jobs, args.seed, args.keep))
    except KeyboardInterrupt as exc:  # every process was stopped on the way out
        print(f"chaos: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return 130
    failed = [o.key for o in outcomes if not o.ok]
    verdict = f"FAILED: {','.join(failed)}" if failed else "all promises kept"
    print(f"chaos: {len(outcomes)} scenarios in {time.monotonic() - started:.0f}s; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
