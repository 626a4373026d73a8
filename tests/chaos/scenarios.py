"""S1-S10: what each scenario breaks, and when (seconds after its load starts).

A scenario's `inject` runs while the runner streams the jobs over `spread` seconds; it records
each fault with `ctx.fault()` (and whether it was a crash that may fall between an upstream
create and its record) and each repair with `ctx.restored()`: the time to terminal is measured
from the last of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import psutil
from celery import Celery

from tests.chaos.cog import SECRET, CogFarm, CogSpec, data_uri, wait_busy
from tests.chaos.load import Load
from tests.chaos.procs import Proc
from tests.chaos.stack import App, Stack


@dataclass
class Context:
    """What an `inject` script may touch, and what it reports back."""

    stack: Stack
    app: App
    load: Load
    rng: random.Random
    jobs: int
    t0: float = field(default_factory=time.monotonic)
    last_fault: float | None = None  # wall clock of the last fault or repair
    faults: int = 0
    crashes: int = 0
    outages: list[tuple[float, float]] = field(default_factory=list)  # POSTs must be 503
    api_down: list[tuple[float, float]] = field(default_factory=list)  # POSTs may go unanswered
    extra: dict[str, Any] = field(default_factory=dict)
    planned: set[str] = field(default_factory=set)  # processes down on purpose, by name
    exits: list[str] = field(default_factory=list)  # processes that exited on their own
    cog: CogFarm | None = None  # S10's Cog servers
    problems: list[str] = field(default_factory=list)  # broken promises seen while injecting
    _celery: Celery | None = None

    def celery(self) -> Celery:
        """A broker-only Celery client: remote control and re-publishing steps."""
        if self._celery is None:
            self._celery = Celery("chaos", broker=self.stack.redis.url)
            self._celery.conf.update(task_serializer="json", broker_connection_timeout=2)
        return self._celery

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()

    def fault(self, crash: bool = False) -> None:
        """A fault now; `crash`: it may fall between an upstream create and its record."""
        self.faults += 1
        self.crashes += crash
        self.last_fault = time.time()

    def restored(self) -> None:
        """What the last fault broke runs again now (T is measured from here)."""
        self.last_fault = time.time()

    async def at(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + seconds - time.monotonic()))


Inject = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One way of breaking the stack, and what differs for it (timings, prompts, workers)."""

    key: str
    title: str
    inject: Inject
    reserved: Callable[[int], int] = lambda jobs: 0  # indices [0, n) posted by `inject`
    timings: dict[str, Any] = field(default_factory=dict)  # Timings overrides
    lowvis: bool = False  # workers on tests.chaos.lowvis (visibility timeout 2 s)
    tag: Callable[[int], str] = lambda index: ""  # extra `[fake:...]` per job
    expect: Callable[[int], str] | None = None  # the terminal status job `index` must reach
    retry: bool = False  # retry 503s and connection errors (S6)
    spread: float = 12.0
    # Postgres and Redis stay up: then no task may raise (a killed child's WorkerLostError aside).
    stores_up: bool = True
    cog: CogSpec | None = None  # jobs on MODEL, routed to two real Cog servers (S10)
    jobs: int | None = None  # this many jobs, whatever --jobs says (Cog slots are few)


def _busy_children(ctx: Context) -> list[int]:
    """Pool children of the prefork worker that are running a task right now (remote control
    `inspect active`, which names each task's `worker_pid`)."""
    replies = ctx.celery().control.inspect(timeout=0.5).active() or {}
    return [
        int(task["worker_pid"])
        for name, tasks in replies.items()
        if name.startswith("chaos-prefork@")
        for task in tasks
        if task.get("worker_pid")
    ]


async def s1(ctx: Context) -> None:
    """kill -9 a prefork pool child in the middle of a step (a download stalls 1 s half-way,
    see STALL), 10 times; the pool forks a new child each time."""
    kills = 0
    for attempt in range(60):
        if kills == 10:
            break
        await ctx.at(2 + 0.5 * attempt)
        busy = await asyncio.to_thread(_busy_children, ctx)
        if busy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ctx.rng.choice(busy), signal.SIGKILL)
                kills += 1
                ctx.fault(crash=True)
                await asyncio.sleep(1.0)  # let the pool replace it
    ctx.extra["kills"] = kills


async def _crash_and_restart(ctx: Context, worker: Proc, sig: int, pause: float) -> None:
    """Signal a worker's main process, wait for it to exit, start it again `pause` s later
    (the watchdog leaves it alone meanwhile: it is down on purpose)."""
    ctx.planned.add(worker.name)
    worker.send(sig)
    ctx.fault(crash=sig == signal.SIGKILL)
    exited = await asyncio.to_thread(worker.wait, 60)  # a warm shutdown finishes its steps
    ctx.extra.setdefault("exited", []).append(exited)
    await asyncio.sleep(pause)
    if worker is ctx.app.prefork:  # children a killed main left behind (billiard's orphans)
        ctx.extra["orphans"] = ctx.extra.get("orphans", 0) + _group_size(worker)
    await ctx.stack.restart(worker)
    ctx.planned.discard(worker.name)
    ctx.restored()


def _group_size(proc: Proc) -> int:
    """Processes still in `proc`'s process group (its session leader may be gone)."""
    count = 0
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            count += os.getpgid(pid) == proc.pid
    return count


async def s2(ctx: Context) -> None:
    """kill -9 the threads worker's (only) process, then the prefork worker's main process."""
    await ctx.at(4)
    await _crash_and_restart(ctx, ctx.app.threads, signal.SIGKILL, 3)
    await ctx.at(10)
    await _crash_and_restart(ctx, ctx.app.prefork, signal.SIGKILL, 3)


async def s3(ctx: Context) -> None:
    """SIGTERM (warm shutdown) each worker under load, then start it again."""
    await ctx.at(3)
    await _crash_and_restart(ctx, ctx.app.threads, signal.SIGTERM, 2)
    await ctx.at(8)
    await _crash_and_restart(ctx, ctx.app.prefork, signal.SIGTERM, 2)


async def s4(ctx: Context) -> None:
    """kill -9 Redis mid-load; 3 s later start it again, empty (no persistence)."""
    redis = ctx.stack.redis
    await ctx.at(5)
    redis.proc.send(signal.SIGKILL)
    ctx.fault()
    await asyncio.to_thread(redis.proc.wait, 10)
    await asyncio.sleep(3)
    await asyncio.to_thread(redis.start)
    ctx.restored()


async def s5(ctx: Context) -> None:
    """Redis stopped while `reserved` jobs are POSTed: every one must still be 201."""
    redis = ctx.stack.redis
    await ctx.at(3)
    await asyncio.to_thread(redis.proc.stop, 10)
    ctx.fault()
    posts = await ctx.load.batch(range(s5_reserved(ctx.jobs)))
    ctx.extra["during"] = f"{sum(p.status == 201 for p in posts)}/{len(posts)}"
    ctx.extra["during_max"] = max((p.seconds for p in posts), default=0.0)
    await asyncio.sleep(1)
    await asyncio.to_thread(redis.start)
    ctx.restored()


def s5_reserved(jobs: int) -> int:
    """How many jobs S5 posts while Redis is down."""
    return min(50, jobs // 2)


async def _terminate_backends(ctx: Context) -> int:
    conn = await asyncpg.connect(ctx.stack.pg.dsn(), timeout=5)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            ctx.app.database,
        )
        return killed
    finally:
        await conn.close()


async def s6(ctx: Context) -> None:
    """Postgres stopped for 10 s under load (POSTs then must be 503), then its backends
    terminated twice while it runs."""
    pg = ctx.stack.pg
    await ctx.at(4)
    await asyncio.to_thread(pg.stop)
    down = time.time()
    ctx.fault(crash=True)  # a worker may lose the job between create and record

    async def probe() -> None:  # one un-retried POST every 0.5 s while it is down
        for index in range(S6_PROBES):
            if time.time() > down + 9:
                break
            await ctx.load.once(index)
            await asyncio.sleep(0.5)

    probes = asyncio.create_task(probe())
    await asyncio.sleep(10)
    up = time.time()
    await asyncio.to_thread(pg.start)
    ctx.outages.append((down, up))
    ctx.restored()
    await probes
    terminated = []
    for _ in range(2):
        await asyncio.sleep(4)
        terminated.append(await _terminate_backends(ctx))
        ctx.fault(crash=True)
    ctx.extra["terminated"] = "+".join(map(str, terminated))


S6_PROBES = 20


async def s7(ctx: Context) -> None:
    """No process fault: the faults are upstream, per job (see `S7_FAULTS`)."""
    ctx.extra["kinds"] = len(S7_FAULTS)


# (tag, the terminal status the job must reach)
S7_FAULTS: list[tuple[str, str]] = [
    ("", "completed"),
    ("[fake:429 times=1 retry_after=2]", "completed"),
    ("[fake:500 times=3]", "completed"),  # 3 retries = MAX_RETRIES: the 4th attempt succeeds
    ("[fake:hang times=1]", "completed"),  # create hangs until REPLICATE_TIMEOUT
    ("[fake:hang on=get times=1]", "completed"),
    ("[fake:garbage times=1]", "completed"),
    ("[fake:500 on=get times=2]", "completed"),
    ("[fake:truncated]", "failed"),  # every download cut: retried, then given up
    ("[fake:file404]", "failed"),
    ("[fake:stuck]", "failed"),  # processing forever: JOB_TIMEOUT fails it
    ("[fake:500 times=99]", "failed"),  # retries exhausted
    ("[fake:failed error=fake_OOM]", "failed"),
]


async def s8(ctx: Context) -> None:
    """Workers run with a 2 s visibility timeout (tests.chaos.lowvis) and 3 s poll countdowns,
    so Redis itself redelivers; on top, every in-flight job's steps are re-published 4 times."""
    sender = ctx.celery()
    republished = 0
    for round_ in range(4):
        await ctx.at(3 + 3 * round_)
        conn = await asyncpg.connect(ctx.stack.pg.dsn(ctx.app.database), timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT id::text, status, attempt FROM jobs "
                "WHERE status IN ('pending', 'processing', 'retrying')"
            )
        finally:
            await conn.close()
        steps: list[tuple[str, list[Any]]] = []
        for row in rows:
            steps.append(("mediagen.jobs.start", [row["id"]]))
            if row["status"] == "processing":
                steps += [("mediagen.jobs.poll", [row["id"], row["attempt"]])] * 2
            else:
                steps.append(("mediagen.jobs.start", [row["id"]]))

        def publish(batch: list[tuple[str, list[Any]]] = steps) -> None:
            for name, args in batch:
                sender.send_task(name, args=args, queue="mediagen")

        await asyncio.to_thread(publish)
        republished += len(steps)
        ctx.fault()
    ctx.extra["republished"] = republished


async def s9(ctx: Context) -> None:
    """kill -9 the API mid-load (POSTs in flight die with it), start it again 2 s later."""
    await ctx.at(4)
    await _kill_api(ctx, 2)


async def _kill_api(ctx: Context, pause: float) -> None:
    """kill -9 the API, start it again `pause` s after it died (S9, S10)."""
    api = ctx.app.api
    ctx.planned.add(api.name)
    down = time.time()
    api.send(signal.SIGKILL)
    ctx.fault(crash=True)
    await asyncio.to_thread(api.wait, 10)
    await asyncio.sleep(pause)
    await ctx.stack.restart(api)
    ctx.planned.discard(api.name)
    ctx.api_down.append((down, time.time()))
    ctx.restored()


async def s10(ctx: Context) -> None:
    """Jobs on a Cog model served by two real Cog servers (one slot each): kill -9 of one
    server (and its worker) mid-prediction, started again 2 s later on its port; kill -9 of the
    API while completion webhooks are being sent, 5 s down (Cog retries a terminal webhook with
    backoff 0.2, 0.4, 0.8... s: some land once it is back, some after the model's deadline, when
    the job already runs a new attempt); every prediction gets its terminal webhook twice more
    (concurrently, the bytes the predictor makes), racing Cog's own: cog-b's as it reaches its
    4th or 5th (last) step, cog-a's once completed (so that the one its kill cut off stays lost); once
    every job is terminal, each completed job's webhook is replayed (the same body, another
    job's picture, `failed`, a later attempt's): all must be acknowledged and ignored."""
    farm = ctx.cog
    assert farm is not None
    stop = asyncio.Event()
    duplicates = asyncio.create_task(_duplicate_webhooks(ctx, farm, stop))
    try:
        await ctx.at(3)
        victim = farm.endpoints[0]
        ctx.extra["killed_busy"] = await asyncio.to_thread(wait_busy, victim, 10)
        ctx.planned.add(victim.name)
        victim.kill()
        ctx.fault(crash=True)
        await asyncio.sleep(2)
        await asyncio.to_thread(victim.start)
        ctx.planned.discard(victim.name)
        ctx.restored()
        await ctx.at(9)
        await asyncio.to_thread(wait_busy, farm.endpoints[1], 5)  # a completion is coming
        await _kill_api(ctx, 5)
        await _all_terminal(ctx, S10_WAIT)
    finally:
        stop.set()
        await duplicates
    await _replay_webhooks(ctx, farm)


S10_WAIT = 150.0  # at most, for every job to be terminal before the replays


def _cog_webhook(ctx: Context, prediction: str) -> str:
    from mediagen.providers.cog.ids import webhook_token

    token = webhook_token(SECRET.encode(), prediction)
    return f"{ctx.app.api_url}/api/v1/webhooks/cog/{prediction}/{token}"


def _succeeded(prediction: str, pictures: list[bytes]) -> dict[str, Any]:
    return {
        "id": prediction,
        "status": "succeeded",
        "logs": "",
        "output": [data_uri(png) for png in pictures],
    }


async def _duplicate_webhooks(ctx: Context, farm: CogFarm, stop: asyncio.Event) -> None:
    """Every prediction a Cog server completed: its terminal webhook twice (at once), as Cog
    would send it, while the API is up (those completed while it is down: once it is back)."""
    sent: set[str] = set()
    answers: Counter[str] = Counter()
    by_hex = {}
    async with httpx.AsyncClient(timeout=15) as client:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
            if ctx.app.api.name in ctx.planned:
                continue
            seen = await asyncio.to_thread(farm.predictions)
            # cog-b's from their 4th of 5 steps (half of them) or their last (Cog's own webhook
            # follows 200 / 40 ms later: a race); cog-a's once completed (one cut off by its
            # kill must stay unreported)
            early = {
                p
                for p, (server, percent) in seen.progress.items()
                if server == "cog-b" and percent >= (80 if int(p[3], 16) % 2 else 100)
            }
            done = (seen.completed | early) - sent
            by_hex.update({uuid.UUID(j).hex: i for j, i in ctx.load.accepted.items()})
            for prediction in sorted(done):
                index = by_hex.get(prediction.split("-")[1])
                if index is None or index not in farm.references:
                    continue  # its 201 not read yet: next round
                body = _succeeded(prediction, farm.references[index])
                url = _cog_webhook(ctx, prediction)
                replies = await asyncio.gather(
                    *(client.post(url, json=body) for _ in range(2)), return_exceptions=True
                )
                if ctx.app.api.name in ctx.planned:  # the API died meanwhile: again later
                    continue
                sent.add(prediction)
                for reply in replies:
                    if isinstance(reply, BaseException):
                        answers[type(reply).__name__] += 1
                        ctx.problems.append(f"duplicate webhook: {type(reply).__name__}")
                    elif reply.status_code != 200:
                        answers[str(reply.status_code)] += 1
                        ctx.problems.append(f"duplicate webhook: {reply.status_code} {reply.text}")
                    else:
                        answers[str(reply.json().get("status"))] += 1
    ctx.extra["dup_webhooks"] = "+".join(f"{n}{k}" for k, n in sorted(answers.items()))


async def _all_terminal(ctx: Context, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(ctx.stack.pg.dsn(ctx.app.database), timeout=5)
        try:
            done = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed', 'canceled')"
            )
        finally:
            await conn.close()
        if done >= ctx.jobs:
            return
        await asyncio.sleep(0.5)


async def _replay_webhooks(ctx: Context, farm: CogFarm) -> None:
    """Replays to every completed job's prediction, and to its next attempt's: all ignored."""
    count, wrong = 0, []
    async with httpx.AsyncClient(base_url=ctx.app.api_url, timeout=15) as client:
        for job_id, index in sorted(ctx.load.accepted.items()):
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job.get("status") != "completed" or index not in farm.references:
                continue
            prediction = str(job["prediction_id"]).split(".")[0]
            later = prediction.rsplit("-", 1)[0] + f"-{int(prediction.rsplit('-', 1)[1]) + 1}"
            other = farm.references[(index + 1) % len(farm.references)]
            bodies = [
                (prediction, _succeeded(prediction, farm.references[index])),
                (prediction, _succeeded(prediction, other)),
                (prediction, {"id": prediction, "status": "failed", "error": "replayed"}),
                (later, _succeeded(later, other)),
            ]
            for target, body in bodies:
                reply = await client.post(_cog_webhook(ctx, target), json=body)
                count += 1
                status = reply.json().get("status") if reply.status_code == 200 else None
                if status != "ignored":
                    wrong.append(f"{target} {body['status']}: {reply.status_code} {reply.text}")
    ctx.extra["replayed"] = count
    if wrong:
        ctx.problems.append(f"{len(wrong)} replayed webhooks not ignored: {wrong[:3]}")


# Outputs of 256 KiB whose download stalls 1 s half-way: a step a kill can land in.
STALL = "[fake:bytes=262144 stall=1]"

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in [
        Scenario("S1", "kill -9 worker child x10", s1, tag=lambda index: STALL),
        Scenario("S2", "kill -9 worker main process", s2, tag=lambda index: STALL),
        Scenario("S3", "SIGTERM worker under load", s3),
        Scenario("S4", "kill -9 Redis, restart empty", s4, stores_up=False),
        Scenario("S5", "Redis down during POSTs", s5, reserved=s5_reserved, stores_up=False),
        Scenario(
            "S6",
            "Postgres down 10s + terminate backends",
            s6,
            reserved=lambda jobs: S6_PROBES,
            retry=True,
            spread=20.0,
            stores_up=False,
        ),
        Scenario(
            "S7",
            "upstream faults",
            s7,
            timings={"job_timeout": 40, "replicate_timeout": 4},
            tag=lambda index: S7_FAULTS[index % len(S7_FAULTS)][0],
            expect=lambda index: S7_FAULTS[index % len(S7_FAULTS)][1],
        ),
        Scenario(
            "S8", "redelivery + re-published steps", s8, timings={"poll_interval": 3}, lowvis=True
        ),
        Scenario("S9", "kill -9 the API mid-load", s9, retry=True),
        Scenario(
            "S10",
            "Cog servers: kill -9 one, API down, duplicate webhooks",
            s10,
            cog=CogSpec(deadline=6),
            jobs=20,
            retry=True,
            spread=4.0,
        ),
    ]
}
