"""`python -m tests.rehearsal [--rate 3] [--faults F1,F2,F3,F4,F5] [--keep] [--out FILE]`
(`make rehearsal`): the multi-host rehearsal. Starts every host, sends a steady load through
HAProxy (each job with a webhook to the receiver host), makes the faults one after another,
then judges. Prints the faults and their recovery as a table, and last:

    rehearsal: accepted=N terminal=N lost=0 duplicated=0 webhooks_missing=0 5xx_other=0 max_recovery_s=X PASS

Exit status 0 on PASS, 1 on FAIL, 2 when it cannot run here (it needs root: iptables, users).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg

from tests.chaos.load import Load, Post, unavailable
from tests.chaos.measure import Monitor, check_files, table
from tests.chaos.procs import stop_all
from tests.chaos.runner import keep_running
from tests.chaos.stack import Timings
from tests.rehearsal import netcut
from tests.rehearsal.cluster import Cluster
from tests.rehearsal.faults import FAULTS, Run, run_faults
from tests.rehearsal.receiver import deliveries
from tests.rehearsal.topology import CLIENT, RECEIVER, RECEIVER_PORT
from tests.rehearsal.verdict import Verdict, judge, markdown

BASELINE = 15.0  # seconds of load before the first fault
TAIL = 10.0  # seconds of load after the last recovery
FINISH_TIMEOUT = 120.0  # for every accepted job to finish once the load stops
DELIVERY_TIMEOUT = 60.0  # then for every webhook delivery to be done
DEFAULT_OUT = Path(".rehearsal/results.md")


def retryable(post: Post) -> bool:
    """What the client sends again after a second, with the same Idempotency-Key: a 503, any
    other 5xx, a 409 (its twin still in progress), no answer. Every attempt is judged."""
    status = post.status
    return (
        unavailable(post)
        or status == "timeout"
        or status == 409
        or (isinstance(status, int) and status >= 500)
    )


async def settled_deliveries(dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            pending = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
            )
        finally:
            await conn.close()
        if pending == 0:
            return
        await asyncio.sleep(1)


async def rows(dsn: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(id, status, created_at, completed_at, prompt) of every job; every webhook delivery."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        jobs = await conn.fetch(
            "SELECT id::text, status, created_at, completed_at, prompt FROM jobs"
        )
        sent = await conn.fetch(
            "SELECT id, job_id::text AS job_id, event, status, attempts FROM webhook_deliveries"
        )
    finally:
        await conn.close()
    return [dict(r) for r in jobs], [dict(r) for r in sent]


async def rehearse(root: Path, keys: list[str], rate: float) -> Verdict:
    cluster = Cluster(root, Timings())
    started = time.monotonic()
    await cluster.start()
    print(
        f"rehearsal: {len(cluster.procs())} service processes up in "
        f"{time.monotonic() - started:.0f}s; {rate:g} jobs/s through {cluster.balancer.url}",
        flush=True,
    )
    tag = uuid.uuid4().hex[:8]
    hook = f"http://{RECEIVER}:{RECEIVER_PORT}/hooks"
    load = Load(
        cluster.balancer.url,
        lambda i: f"rehearsal job {i} [{tag}]",
        True,
        lambda i: {"parameters": {"width": 256, "height": 256}, "webhook": f"{hook}/{i}"},
        headers=lambda i: {"Idempotency-Key": f"rehearsal-{tag}-{i}"},
        retryable=retryable,
        local_address=CLIENT,
    )
    monitor = Monitor(cluster.dsn)
    run = Run(cluster, load, monitor, rate)
    exits: list[str] = []
    stop_load, stop_watch = asyncio.Event(), asyncio.Event()
    watching = asyncio.gather(
        monitor.run(stop_watch), keep_running(cluster.procs, run.planned, exits, stop_watch)
    )
    loading = asyncio.create_task(load.steady(rate, stop_load))
    try:
        await run_faults(run, keys, BASELINE)
        await asyncio.sleep(TAIL)
    finally:
        stop_load.set()
        await loading
    missing = await monitor.wait_terminal(set(load.accepted), time.monotonic() + FINISH_TIMEOUT)
    if not missing:
        await settled_deliveries(cluster.dsn, DELIVERY_TIMEOUT)
        await asyncio.sleep(Timings().sweep_interval + 2)  # late duplicates land meanwhile
    end = time.time()
    stop_watch.set()
    await watching
    await asyncio.to_thread(cluster.stop)
    full, audit = await table(cluster.dsn)
    jobs, sent = await rows(cluster.dsn)
    file_errors, _, _ = check_files(cluster.media, full)
    verdict = judge(
        load.posts,
        load.accepted,
        jobs,
        audit,
        monitor.changed,
        file_errors,
        sent,
        deliveries(cluster.receiver_log),
        run.faults,
        rate,
        end,
    )
    verdict.problems[:0] = run.problems
    if exits:
        verdict.problems.append(f"processes exited on their own: {'; '.join(exits)}")
    verdict.notes.append(f"answers: {dict(verdict.answers)}")
    return verdict


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rehearsal", description=__doc__)
    parser.add_argument("--rate", type=float, default=3.0, help="jobs per second")
    parser.add_argument("--faults", default=",".join(key for key, *_ in FAULTS))
    parser.add_argument("--keep", action="store_true", help="keep logs and data afterwards")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results table")
    args = parser.parse_args(argv)
    keys = [k.strip().upper() for k in args.faults.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in {key for key, *_ in FAULTS}]:
        parser.error(f"unknown faults {unknown}")
    if os.geteuid() != 0:
        print("rehearsal: needs root (iptables rules, users of its own)", file=sys.stderr)
        return 2
    if missing := [t for t in ("haproxy", "iptables", "redis-server") if not shutil.which(t)]:
        print(f"rehearsal: missing {missing}: scripts/ensure-rehearsal-tools.sh", file=sys.stderr)
        return 2
    atexit.register(netcut.remove)
    atexit.register(stop_all)  # runs first: processes, then the rules
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="mediagen-rehearsal-"))
    started = time.monotonic()
    verdict: Verdict | None = None
    try:
        netcut.install()
        verdict = asyncio.run(rehearse(root, keys, args.rate))
    except KeyboardInterrupt as exc:
        print(f"rehearsal: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return 130
    except Exception as exc:  # the stack did not come up, a server did not restart...
        traceback.print_exc()
        verdict = Verdict(problems=[f"could not run: {type(exc).__name__}: {exc}"])
    finally:
        stop_all()
        netcut.remove()
        if verdict is None or not verdict.ok or args.keep:
            print(f"rehearsal: logs and data kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    table_md = markdown(verdict)
    print(table_md)
    for note in verdict.notes:
        print(f"  {note}")
    for problem in verdict.problems:
        print(f"  ! {problem}")
    print(f"rehearsal: {time.monotonic() - started:.0f}s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"{table_md}\n\n`{verdict.line()}`\n")
    print(f"rehearsal: table written to {args.out}")
    print(verdict.line())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
