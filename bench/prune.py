"""Benchmark: pruning a million old job rows while the API serves submits and status reads.

    make bench-prune                       # or: python bench/prune.py
    python bench/prune.py --rows 200000    # a smaller table

Starts one Postgres and one Redis (fresh embedded servers, or --database-url/--redis-url) and
our API as ONE uvicorn process. Fills `jobs` with `--rows` finished jobs older than
JOB_RECORD_TTL (one INSERT ... SELECT FROM generate_series), plus idempotency records and
webhook deliveries past their ages. Then measures submit and status with wrk (`-t1 -c32`)
without pruning, and again while this process runs the pruning to the end
(`mediagen.jobs.retention.prune`, PRUNE_BATCH rows per statement, as the sweeper does), and
prints how long the pruning took, rows per second, and the hot path's p50/p99 both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import BODY, LUA_STATUS, LUA_SUBMIT, PATHS, UNLIMITED, submit_some
from bench.common import (
    ROOT,
    Procs,
    WrkResult,
    asyncpg_dsn,
    clean_env,
    ensure_wrk,
    free_port,
    median,
    servers,
    wait_http,
    wrk,
)

WORK = ROOT / ".bench" / "prune"

_OLD_JOBS = """
INSERT INTO jobs (id, status, prompt, parameters, provider, outputs, attempt, retry_count,
                  quota_shard, created_at, updated_at, started_at, completed_at, error)
SELECT gen_random_uuid(), (ARRAY['failed', 'canceled', 'expired'])[1 + g % 3], 'an old job',
       '{}'::jsonb, 'builtin', '[]'::jsonb, 1, 0, 0,
       now() - make_interval(secs => $2::float8) - make_interval(secs => g),
       now() - make_interval(secs => $2::float8), now() - make_interval(secs => $2::float8),
       now() - make_interval(secs => $2::float8) - make_interval(secs => g / 10.0),
       'gave up'
FROM generate_series(1, $1) AS g
"""
_OLD_RECORDS = """
INSERT INTO idempotency_keys (id, scope, key, request_hash, created_at)
SELECT gen_random_uuid(), 'anonymous', 'bench-' || g, 'h', now() - interval '2 days'
FROM generate_series(1, $1) AS g
"""
# Deliveries of recent jobs (kept), delivered long ago (pruned on their own age).
_OLD_DELIVERIES = """
INSERT INTO webhook_deliveries (id, job_id, event, url, payload, status, attempts, created_at)
SELECT gen_random_uuid(), j.id, 'completed', 'https://example.com/hook', '{}'::jsonb,
       'delivered', 1, now() - interval '8 days'
FROM (SELECT id FROM jobs WHERE status = 'pending' LIMIT 500) AS j,
     generate_series(1, $1 / 500) AS g
"""


async def fill(dsn: str, rows: int, record_age: float) -> float:
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_OLD_JOBS, rows, record_age + 3600)
        await conn.execute(_OLD_RECORDS, rows // 10)
        await conn.execute(_OLD_DELIVERIES, rows // 10)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.monotonic() - started


def load(url: str, scripts: dict[str, Path], duration: float, connections: int,
         results: dict[str, list[WrkResult]]) -> None:
    for endpoint, script in scripts.items():
        result = wrk(url + PATHS[endpoint], script, duration, connections)
        if result.errors:
            raise SystemExit(f"bench: {endpoint}: {result.errors} errors of {result.requests}")
        results.setdefault(endpoint, []).append(result)
        print(f"  {endpoint:7} {result.row()}", flush=True)


async def prune_all(env: dict[str, str]) -> tuple[float, dict[str, int], int]:
    """The pruning to the end in this process (its own pool): seconds, rows by kind, rounds."""
    os.environ.update(env)
    import redis.asyncio as aioredis

    from mediagen.config import get_settings
    from mediagen.db import close_db, init_db
    from mediagen.jobs import retention
    from mediagen.storage import create_storage

    settings = get_settings()
    await init_db(settings, "bench-prune")
    storage = create_storage(settings)
    redis = aioredis.from_url(env["REDIS_URL"])
    started = time.monotonic()
    rounds = 0
    totals: dict[str, int] = {}
    try:
        while True:  # rounds of the sweeper's budget, back to back
            rounds += 1
            pruned = await retention.prune(storage, settings, redis,
                                           budget=retention.PRUNE_BUDGET)
            for kind, count in pruned.counts.items():
                totals[kind] = totals.get(kind, 0) + count
            if pruned.finished:
                break
        return time.monotonic() - started, totals, rounds
    finally:
        await redis.aclose()
        await storage.close()
        await close_db()


async def run(args: argparse.Namespace) -> dict[str, float]:
    ensure_wrk()
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs(WORK / "logs")
    with servers(WORK, args.database_url, args.redis_url) as (database_url, redis_url):
        try:
            env = clean_env(**{"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                               "LOG_LEVEL": "WARNING", "LOCAL_STORAGE_PATH": str(WORK / "media"),
                               "RATE_LIMIT_PER_MINUTE": UNLIMITED,
                               "MAX_JOBS_IN_FLIGHT": UNLIMITED,
                               "RATE_LIMIT_READS_PER_MINUTE": UNLIMITED})
            migrate = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mediagen", "migrate", env=env, cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL)
            if await migrate.wait():
                raise SystemExit("bench: migrations failed")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            procs.spawn([sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port",
                         str(port), "--no-access-log", "--log-level", "warning",
                         "mediagen.main:app"], env, "api.log")
            await wait_http(f"{url}/openapi.json")
            ids = await submit_some(url, 500)  # pending (no worker): the deliveries' jobs
            took = await fill(asyncpg_dsn(database_url), args.rows, 30 * 86400)
            print(f"inserted {args.rows:,} old finished jobs, {args.rows // 10:,} idempotency "
                  f"records and deliveries in {took:.1f} s", flush=True)
            submit, status = WORK / "submit.lua", WORK / "status.lua"
            submit.write_text(LUA_SUBMIT % orjson.dumps(BODY).decode())
            status.write_text(LUA_STATUS % ",".join(f'"{i}"' for i in ids))
            scripts = {"submit": submit, "status": status}
            for script in scripts.values():  # warm-up
                wrk(url + PATHS["submit" if script is submit else "status"], script, 2,
                    args.connections)

            quiet: dict[str, list[WrkResult]] = {}
            print(f"without pruning (wrk -t1 -c{args.connections} -d{args.duration:g}s: "
                  "req/s, p50 ms, p99 ms):", flush=True)
            for _ in range(args.rounds):
                load(url, scripts, args.duration, args.connections, quiet)

            busy: dict[str, list[WrkResult]] = {}
            print("during pruning:", flush=True)
            pruning = asyncio.create_task(prune_all(env))
            while not pruning.done():
                await asyncio.to_thread(load, url, scripts, args.duration, args.connections, busy)
            seconds, totals, rounds = await pruning
            return report(args, quiet, busy, seconds, totals, rounds)
        finally:
            procs.stop()


def report(args: argparse.Namespace, quiet: dict[str, list[WrkResult]],
           busy: dict[str, list[WrkResult]], seconds: float, totals: dict[str, int],
           rounds: int) -> dict[str, float]:
    rows = sum(totals.values())
    print(f"\nbench-prune ({args.rows:,} old job rows; PRUNE_BATCH rows per statement)")
    print(f"pruned {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s, "
          f"{rounds} sweeps' budgets): "
          + ", ".join(f"{n:,} {kind}" for kind, n in totals.items() if n))
    print(f"{'endpoint':8} {'quiet p50':>10} {'p99':>8}  {'pruning p50':>12} {'p99':>8}  "
          f"{'req/s quiet':>11} {'pruning':>8}")
    figures = {"prune_seconds": seconds, "prune_rows_per_s": rows / seconds}
    for endpoint in ("submit", "status"):
        q, b = quiet[endpoint], busy[endpoint]
        qp50, qp99 = median([r.p50_ms for r in q]), median([r.p99_ms for r in q])
        bp50, bp99 = median([r.p50_ms for r in b]), median([r.p99_ms for r in b])
        qrps, brps = median([r.requests_per_s for r in q]), median([r.requests_per_s for r in b])
        print(f"{endpoint:8} {qp50:10.2f} {qp99:8.2f}  {bp50:12.2f} {bp99:8.2f}  "
              f"{qrps:11.0f} {brps:8.0f}")
        figures |= {f"{endpoint}_p50": qp50, f"{endpoint}_p99": qp99,
                    f"{endpoint}_pruning_p50": bp50, f"{endpoint}_pruning_p99": bp99}
    return figures


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="old job rows to prune")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="wrk rounds without pruning")
    parser.add_argument("--database-url", help="use this Postgres (default: a fresh embedded one)")
    parser.add_argument("--redis-url", help="use this Redis (default: a fresh embedded one)")
    return parser


def main() -> int:
    asyncio.run(run(parser().parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
