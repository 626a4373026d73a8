"""Benchmark: the request path of mediagen against a bare-stack baseline doing the same I/O.

    make bench-api                          # or: python bench/api.py
    python bench/api.py --preload 1000000   # first fill `jobs` with a million unfinished jobs
    python bench/api.py --preload 10000 --preload-keys 100   # ... spread over 100 API keys
    python bench/api.py --preload-keys 100  # the same keys, an empty table: what to compare with

Starts one Postgres and one Redis (fresh embedded servers, or --database-url/--redis-url), our
API and `bench/baseline_app.py` (Starlette + asyncpg + redis.asyncio + orjson: one INSERT and one
LPUSH per submit, one SELECT by primary key per status read), each as ONE uvicorn process on the
same servers. Then drives them alternately with wrk (`-t1 -c32 -d8s` by default), round after
round, and prints req/s, p50 and p99 of each and the ratio ours/baseline (medians over rounds).

Our API runs with its defaults (no API keys, so anonymous callers are served) except for the
three per-key limits (submissions, reads, unfinished jobs), raised out of reach but still
checked, so every request pays for them. With --preload-keys K, K keys are made first (keys
are then required) and the preloaded jobs shared among them; the requests are those of the
first key. Compare with `--preload-keys K` alone (the same keys, no backlog).

    python bench/api.py --versus LOG_LEVEL=WARNING --versus METRICS_ENABLED=false \
        --versus ACCESS_LOG=false

compares our API with itself under other settings instead (here: what metrics and logs cost;
`make bench-observability`). Logs go to files, as they would to a collector.

    python bench/api.py --versus-tree ../mediagen-before   # a checkout of other code

compares our API with the API of another checkout of mediagen (run from that checkout: a
`PYTHONPATH` alone would not do, since `python -m uvicorn` imports from its working directory
first), on the same servers and the same schema.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from mediagen.jobs.models import COUNTER_SHARDS
from mediagen.keys.service import PREFIX, SHOWN, hash_key, new_webhook_secret

WORK = ROOT / ".bench" / "api"
BODY = {"prompt": "A beautiful sunset over mountains",
        "parameters": {"width": 1024, "height": 1024, "num_inference_steps": 50}}
LUA_SUBMIT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""
LUA_STATUS = """
local ids = {%s}
request = function()
  return wrk.format("GET", "/api/v1/status/" .. ids[math.random(#ids)])
end
"""
UNLIMITED = "1000000000"
PATHS = {"submit": "/api/v1/generate", "status": "/"}


async def preload_keys(conn: asyncpg.Connection, count: int) -> list[tuple[uuid.UUID, str]]:
    """`count` API keys (id, secret), each with its counter shards, as `mediagen keys create`
    makes them; once one exists, our API requires a key (AUTH_REQUIRED=auto)."""
    keys = [(uuid.uuid4(), PREFIX + secrets.token_urlsafe(32)) for _ in range(count)]
    await conn.executemany(
        "INSERT INTO api_keys (id, name, prefix, key_hash, created_at, webhook_secret) "
        "VALUES ($1, $2, $3, $4, now(), $5)",
        [(key, f"bench {n}", secret[:SHOWN], hash_key(secret), new_webhook_secret())
         for n, (key, secret) in enumerate(keys)])
    await conn.execute(
        "INSERT INTO job_counters (scope, shard, unfinished) SELECT k, g, 0 "
        f"FROM unnest($1::uuid[]) AS k, generate_series(0, {COUNTER_SHARDS - 1}) AS g",
        [key for key, _ in keys])
    return keys


async def preload(dsn: str, count: int, keys: int = 0) -> tuple[float, list[str]]:
    """`count` pending jobs (created over the last day), as a backlog would be: anonymous, or
    spread evenly over `keys` new API keys (their secrets returned)."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        params = orjson.dumps(BODY["parameters"]).decode()
        owners: list[uuid.UUID | None] = [None]
        secrets_: list[str] = []
        if keys:
            made = await preload_keys(conn, keys)
            owners, secrets_ = [key for key, _ in made], [secret for _, secret in made]
        # Counters kept with the transitions (where the schema has them) must agree with the rows:
        # the jobs are counted in shard 0 of their owner's scope.
        counted = await conn.fetchval("SELECT to_regclass('job_counters') IS NOT NULL")
        columns = ["id", "status", "prompt", "parameters", "provider", "outputs", "attempt",
                   "retry_count", "created_at", "updated_at", "api_key_id"] + (
                       ["quota_shard"] if counted else [])
        batch = 100_000
        for first in range(0, count, batch):
            rows = [
                (uuid.uuid4(), "pending", "a preloaded job", params, "builtin", "[]", 0, 0,
                 now - timedelta(seconds=86_400 * (count - i) / count), now,
                 owners[i % len(owners)], *([0] if counted else []))
                for i in range(first, min(count, first + batch))
            ]
            await conn.copy_records_to_table("jobs", records=rows, columns=columns)
        if counted:
            by_state = await conn.fetchval(
                "SELECT count(*) > 0 FROM information_schema.columns "
                "WHERE table_name = 'job_counters' AND column_name = 'pending'")
            await conn.execute(
                "UPDATE job_counters SET unfinished = unfinished + owned.n"
                + (", pending = pending + owned.n" if by_state else "")
                + " FROM (SELECT coalesce(api_key_id, $1) AS scope, count(*) AS n FROM jobs "
                "GROUP BY 1) AS owned WHERE job_counters.scope = owned.scope AND shard = 0",
                uuid.UUID(int=0))
        # What autovacuum and the checkpointer would do in the first minutes after a bulk load,
        # done now: left to them, they land in random rounds (p99 of 250-400 ms in the rounds
        # they hit, on either app) and the comparison measures them instead of the request path.
        await conn.execute("VACUUM (ANALYZE) jobs")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.monotonic() - started, secrets_


async def submit_some(url: str, count: int, secret: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
        ids = []
        for _ in range(count):
            response = await client.post("/api/v1/generate", json=BODY)
            response.raise_for_status()
            ids.append(response.json()["job_id"])
        return ids


def run_round(name: str, url: str, scripts: dict[str, Path], args: argparse.Namespace,
              results: dict[tuple[str, str], list[WrkResult]]) -> None:
    for endpoint, script in scripts.items():
        result = wrk(url + PATHS[endpoint], script, args.duration, args.connections)
        if result.errors:
            raise SystemExit(f"bench: {name} {endpoint}: {result.errors} errors of "
                             f"{result.requests} requests (see {WORK}/logs)")
        results.setdefault((name, endpoint), []).append(result)
        print(f"  {name:8} {endpoint:7} {result.row()}", flush=True)


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Drive both apps; print the table; return its figures (medians)."""
    ensure_wrk()
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs(WORK / "logs")
    with servers(WORK, args.database_url, args.redis_url) as (database_url, redis_url):
        try:
            env = clean_env(**{"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                               "LOG_LEVEL": "INFO", "LOCAL_STORAGE_PATH": str(WORK / "media"),
                               "RATE_LIMIT_PER_MINUTE": UNLIMITED,
                               "MAX_JOBS_IN_FLIGHT": UNLIMITED,
                               "RATE_LIMIT_READS_PER_MINUTE": UNLIMITED,
                               **dict(item.split("=", 1) for item in args.env)})
            subprocess_run = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mediagen", "migrate", env=env, cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL)
            if await subprocess_run.wait():
                raise SystemExit("bench: migrations failed")
            dsn = asyncpg_dsn(database_url)
            secrets_: list[str] = []
            if args.preload or args.preload_keys:
                took, secrets_ = await preload(dsn, args.preload, args.preload_keys)
                spread = f" over {args.preload_keys} keys" if args.preload_keys else ""
                print(f"preloaded {args.preload:,} unfinished jobs{spread} in {took:.1f} s",
                      flush=True)
            # With keys, the requests are those of the first key (one with a backlog of its own).
            auth = f'wrk.headers["Authorization"] = "Bearer {secrets_[0]}"\n' if secrets_ else ""
            ours, base = free_port(), free_port()
            uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log",
                       "--log-level", "warning"]
            procs.spawn([*uvicorn, "--port", str(ours), "mediagen.main:app"], env, "ours.log")
            urls = {"mediagen": f"http://127.0.0.1:{ours}", "baseline": f"http://127.0.0.1:{base}"}
            if args.versus or args.versus_tree:  # the baseline is our API, otherwise
                versus = {**env, **dict(item.split("=", 1) for item in args.versus)}
                tree = Path(args.versus_tree).resolve() if args.versus_tree else ROOT
                if args.versus_tree:
                    versus["PYTHONPATH"] = str(tree)
                print(f"baseline: mediagen of {tree} with {' '.join(args.versus) or 'its defaults'}",
                      flush=True)
                procs.spawn([*uvicorn, "--port", str(base), "mediagen.main:app"], versus,
                            "baseline.log", cwd=tree)
                await wait_http(f"{urls['baseline']}/openapi.json")
            else:
                procs.spawn([*uvicorn, "--port", str(base), "bench.baseline_app:app"],
                            {**env, "BENCH_DATABASE_URL": dsn, "BENCH_REDIS_URL": redis_url},
                            "baseline.log")
                await wait_http(f"{urls['baseline']}/api/v1/status/{uuid.uuid4()}", ok=405)
            await wait_http(f"{urls['mediagen']}/openapi.json")
            submit = WORK / "submit.lua"
            submit.write_text(auth + LUA_SUBMIT % orjson.dumps(BODY).decode())
            scripts: dict[str, dict[str, Path]] = {}
            for name, url in urls.items():
                ids = await submit_some(url, 500, secrets_[0] if secrets_ else None)
                status = WORK / f"status-{name}.lua"
                status.write_text(auth + LUA_STATUS % ",".join(f'"{i}"' for i in ids))
                scripts[name] = {"submit": submit, "status": status}
                # Warm-up: connections opened, statements prepared, caches filled.
                for endpoint, script in scripts[name].items():
                    wrk(url + PATHS[endpoint], script, 2, args.connections)

            results: dict[tuple[str, str], list[WrkResult]] = {}
            print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds "
                  f"(req/s, p50 ms, p99 ms):", flush=True)
            for round_ in range(args.rounds):
                # Which goes first alternates: the second of a pair runs on a warmer (or more
                # fragmented) Postgres, an order effect of up to 15% on this machine.
                order = list(urls.items())
                for name, url in order if round_ % 2 == 0 else reversed(order):
                    run_round(name, url, scripts[name], args, results)
            return print_table(results, args)
        finally:
            procs.stop()


def print_table(results: dict[tuple[str, str], list[WrkResult]],
                args: argparse.Namespace) -> dict[str, float]:
    backlog = f"{args.preload:,} unfinished jobs preloaded" if args.preload else "empty table"
    if args.preload_keys:
        backlog += f", {args.preload_keys} keys"
    print(f"\nbench-api ({backlog}; medians of {args.rounds} rounds)")
    print(f"{'endpoint':8} {'mediagen req/s':>14} {'p50':>7} {'p99':>7}  "
          f"{'baseline req/s':>14} {'p50':>7} {'p99':>7}  {'ratio':>6} {'p99 x':>6}")
    figures: dict[str, float] = {}
    for endpoint in ("submit", "status"):
        ours, base = results[("mediagen", endpoint)], results[("baseline", endpoint)]
        rps = median([r.requests_per_s for r in ours])
        base_rps = median([r.requests_per_s for r in base])
        p50, p99 = median([r.p50_ms for r in ours]), median([r.p99_ms for r in ours])
        bp50, bp99 = median([r.p50_ms for r in base]), median([r.p99_ms for r in base])
        print(f"{endpoint:8} {rps:14.0f} {p50:7.2f} {p99:7.2f}  {base_rps:14.0f} {bp50:7.2f} "
              f"{bp99:7.2f}  {rps / base_rps:5.2f}x {p99 / bp99:5.2f}x")
        figures |= {f"{endpoint}_rps": rps, f"{endpoint}_p50": p50, f"{endpoint}_p99": p99,
                    f"{endpoint}_base_rps": base_rps, f"{endpoint}_base_p99": bp99,
                    f"{endpoint}_ratio": rps / base_rps, f"{endpoint}_p99_ratio": p99 / bp99}
    return figures


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preload", type=int, default=0, help="unfinished jobs to insert first")
    parser.add_argument("--preload-keys", type=int, default=0, metavar="K",
                        help="spread the preloaded jobs over K new API keys (0: anonymous); "
                             "the requests then use the first of them (without --preload: "
                             "the empty table to compare with)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for our API, e.g. FAST_PATHS=false (repeatable)")
    parser.add_argument("--versus", action="append", default=[], metavar="NAME=VALUE",
                        help="compare with our API under this setting instead of the bare "
                             "baseline app, e.g. METRICS_ENABLED=false (repeatable)")
    parser.add_argument("--versus-tree", metavar="DIR",
                        help="compare with the API of another checkout of mediagen instead of "
                             "the bare baseline app (with --versus: under those settings)")
    parser.add_argument("--database-url", help="use this Postgres (default: a fresh embedded one)")
    parser.add_argument("--redis-url", help="use this Redis (default: a fresh embedded one)")
    return parser


def main() -> int:
    asyncio.run(run(parser().parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
