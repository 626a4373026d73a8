"""`make bench`: every benchmark in turn, then one table of their figures, dated, with the machine.

    python bench/all.py              # about 10 minutes on our 2-core machines
    python bench/all.py              # about 11 minutes on our 2-core machines

bench-api runs three times: on an empty jobs table, with 1,000,000 unfinished jobs preloaded
(the request path must not care), and against itself with metrics and logs off (what they
cost: METRICS_ENABLED=false, ACCESS_LOG=false, LOG_LEVEL=WARNING). bench-fair times how long a
key waits behind another's backlog. Each benchmark starts its own fresh servers and processes.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import api, cog, e2e, fair, inflight


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores {model}, {memory:.0f} GiB, Python {platform.python_version()}"


def main() -> int:
    empty = asyncio.run(api.run(api.parser().parse_args([])))
    loaded = asyncio.run(api.run(api.parser().parse_args(["--preload", "1000000"])))
    observed = asyncio.run(api.run(api.parser().parse_args(
        ["--versus", "METRICS_ENABLED=false", "--versus", "ACCESS_LOG=false",
         "--versus", "LOG_LEVEL=WARNING"])))
    end_to_end = asyncio.run(e2e.run(e2e.parser().parse_args([])))
    in_flight = asyncio.run(inflight.run(inflight.parser().parse_args([])))
    handoff = asyncio.run(cog.run(cog.parser().parse_args([])))
    slot, instant = handoff["200 ms, this tree"], handoff["near-instant, this tree"]
    turns = asyncio.run(fair.run(fair.parser().parse_args([])))

    print(f"\nmake bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"{'what':58} {'measured':>30}")
    rows = [
        ("submit, empty table: req/s (x baseline), p99 (x baseline)",
         f"{empty['submit_rps']:.0f} ({empty['submit_ratio']:.2f}x), "
         f"{empty['submit_p99']:.1f} ms ({empty['submit_p99_ratio']:.2f}x)"),
        ("status, empty table: req/s (x baseline), p99 (x baseline)",
         f"{empty['status_rps']:.0f} ({empty['status_ratio']:.2f}x), "
         f"{empty['status_p99']:.1f} ms ({empty['status_p99_ratio']:.2f}x)"),
        ("submit, 1,000,000 unfinished: req/s (vs empty)",
         f"{loaded['submit_rps']:.0f} ({loaded['submit_rps'] / empty['submit_rps'] - 1:+.0%})"),
        ("status, 1,000,000 unfinished: req/s (vs empty)",
         f"{loaded['status_rps']:.0f} ({loaded['status_rps'] / empty['status_rps'] - 1:+.0%})"),
        ("metrics and logs on: submit, status (x them off)",
         f"{observed['submit_ratio']:.2f}x, {observed['status_ratio']:.2f}x"),
        ("end to end, 2,000 jobs: jobs/s",
         f"{end_to_end['throughput_jobs_per_s']:.1f}"),
        ("end to end at 10 jobs/s: submit to completed p50 / p99",
         f"{end_to_end['latency_p50_ms']:.0f} / {end_to_end['latency_p99_ms']:.0f} ms"),
        ("in flight, 1,000 jobs at 5 s latency: accepted in / all done in",
         f"{in_flight['accepted_s']:.2f} s / {in_flight['wall_s']:.2f} s"),
        ("in flight: most at once, worker RSS",
         f"{in_flight['max_in_flight']:.0f}, {in_flight['rss_mib']:.0f} MiB"),
        ("Cog, one slot, 200 ms predictions: utilization, gap p50/p99",
         f"{slot.utilization:.1%}, {slot.p50_ms:.0f} / {slot.p99_ms:.0f} ms"),
        ("Cog, near-instant predictions: handoffs over 100 ms, longest",
         f"{instant.over_100ms}, {instant.max_ms:.0f} ms"),
        ("turns, A's 10,000 jobs then B's 10: B's wait p50 / max",
         f"{turns['b_wait_p50_s']:.1f} s / {turns['b_wait_max_s']:.1f} s"),
        ("turns: A's throughput (x A alone)", f"{turns['a_throughput_ratio']:.2f}x"),
    ]
    for what, measured in rows:
        print(f"{what:58} {measured:>30}")
    cog_ok = all(f.completed == f.jobs for f in handoff.values())
    return 0 if end_to_end["ok"] and in_flight["ok"] and cog_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
