"""One scenario end to end: launch the service, stream the jobs while the scenario breaks
things, wait (bounded) for every accepted job to be terminal, let late duplicates land, stop
the service, then judge every promise from the database, the fake's counters and the files."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

from tests.chaos.cog import MODEL, CogFarm, check_cog
from tests.chaos.load import Load, Post
from tests.chaos.measure import (
    TERMINAL,
    Monitor,
    Outcome,
    check_files,
    interrupted_steps,
    last_error,
    outcome,
    table,
    task_errors,
)
from tests.chaos.measure import worker_redeliveries as redeliveries
from tests.chaos.procs import Proc, stop_all
from tests.chaos.scenarios import Context, Scenario
from tests.chaos.stack import Stack, Timings

WAIT_MARGIN = 30.0  # beyond T, before an unfinished job is declared lost


@contextlib.asynccontextmanager
async def stack(timings: Timings, keep: bool = False) -> AsyncIterator[Stack]:
    """Servers for a run, in a scratch directory; every process stopped however it ends."""
    root = Path(tempfile.mkdtemp(prefix="mediagen-chaos-"))
    ok = False
    try:
        the_stack = Stack(root, timings)
        await asyncio.to_thread(the_stack.start)
        yield the_stack
        ok = not the_stack.failed
    finally:
        await asyncio.to_thread(stop_all)
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"chaos: logs and data kept in {root}", flush=True)


async def supervise(ctx: Context, stop: asyncio.Event) -> None:
    """Like compose's `restart: unless-stopped`: start again a service process that exited on
    its own (not killed by the scenario), so the rest of the recovery can still be measured.
    Each such exit is recorded, and is a broken promise: `mediagen worker` and `make run`
    have no supervisor."""
    await keep_running(lambda: ctx.app.procs, ctx.planned, ctx.exits, stop)


async def keep_running(
    procs: Callable[[], list[Proc]], planned: set[str], exits: list[str], stop: asyncio.Event
) -> None:
    """Until `stop`: every process of `procs()` not named in `planned` (down on purpose) that
    exited is started again, and its exit recorded in `exits` (at most 12)."""
    while not stop.is_set():
        for proc in procs():
            if proc.name in planned or proc.alive() or len(exits) >= 12:
                continue
            code = proc.popen.returncode if proc.popen else None
            exits.append(f"{proc.name} exited ({code}): {last_error(proc.log)}")
            await asyncio.to_thread(proc.stop, 5)
            proc.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _bound(scenario: Scenario, timings: Timings, jobs: int) -> float:
    """T for this scenario; in S7 a stuck prediction ends at JOB_TIMEOUT after its creation,
    failed by its next poll or the next sweep; in S10 a lost Cog prediction is retried after
    the model's deadline (`CogSpec.bound`)."""
    if scenario.cog is not None:
        return scenario.cog.bound(timings.poll_interval, timings.retry_max_delay, jobs)
    if scenario.expect is not None:
        deadline = timings.job_timeout + timings.sweep_interval + timings.poll_interval + 5
        return max(timings.bound(), deadline)
    return timings.bound()


async def run_scenario(the_stack: Stack, scenario: Scenario, jobs: int, seed: int = 5) -> Outcome:
    """Launch a fresh service on `the_stack`, run `scenario` with `jobs` jobs, judge it."""
    timings = replace(the_stack.timings, **scenario.timings)
    jobs = scenario.jobs or jobs
    rng = random.Random(f"{seed}-{scenario.key}")
    latency = [round(rng.uniform(*timings.latency), 1) for _ in range(jobs)]

    def prompt(index: int) -> str:
        tag = scenario.tag(index)
        return f"chaos {scenario.key} job {index} [fake:latency={latency[index]}] {tag}".strip()

    spec, farm = scenario.cog, None
    try:
        env = timings.env()
        if spec is not None:  # two Cog endpoints and a reference server, a models file
            workdir = the_stack.root / scenario.key
            farm = await CogFarm.start(the_stack.root, workdir, the_stack.base_env, spec.deadline)
            env |= farm.env()
        app = await the_stack.launch(scenario.key, env, scenario.lowvis, webhooks=farm is not None)
        if farm is not None and spec is not None:
            await farm.make_references(
                {i: spec.reference_inputs(prompt(i), i) for i in range(jobs)}
            )
    except BaseException:
        the_stack.failed = True
        await the_stack.stop_app()
        if farm is not None:
            await asyncio.to_thread(farm.stop)
        raise
    body = None if spec is None else (lambda i: {"model": MODEL, "parameters": spec.parameters(i)})
    load = Load(app.api_url, prompt, scenario.retry, body)
    dsn = the_stack.pg.dsn(app.database)
    monitor, stop = Monitor(dsn), asyncio.Event()
    ctx = Context(the_stack, app, load, rng, jobs, cog=farm)
    watching = asyncio.gather(monitor.run(stop), supervise(ctx, stop))
    bound = _bound(scenario, timings, jobs)
    try:
        first = scenario.reserved(jobs)
        streaming = asyncio.create_task(load.stream(list(range(first, jobs)), scenario.spread, rng))
        await asyncio.wait_for(scenario.inject(ctx), timeout=300)
        await asyncio.wait_for(streaming, timeout=300)
        last_post = max((p.ended for p in load.posts), default=time.time())
        reference = ctx.last_fault if ctx.last_fault is not None else last_post
        wait = max(0.0, reference + bound + WAIT_MARGIN - time.time())
        missing = await monitor.wait_terminal(set(load.accepted), time.monotonic() + wait)
        if not missing:  # late duplicates (a re-sent poll, a redelivery) land within this
            await asyncio.sleep(timings.sweep_interval + timings.poll_interval + 2)
        log_files = [p.log for p in app.workers]
    finally:
        stop.set()
        await watching
        ctx.close()
        await load.close()
        await the_stack.stop_app()
        if farm is not None:
            await asyncio.to_thread(farm.stop)
    outcome = await judge(the_stack, scenario, ctx, monitor, dsn, reference, bound)
    if interrupted := interrupted_steps(log_files):
        outcome.extra += f" steps_lost_with_child={interrupted}"
    if errors := task_errors(log_files):
        outcome.extra += f" task_errors={len(errors)}"
        if scenario.stores_up:  # nothing was down: a task that raised is a bug
            outcome.problems.append(f"{len(errors)} tasks raised, e.g. {errors[0]}")
    if scenario.lowvis:
        outcome.extra += f" redelivered={redeliveries(log_files)}"
    the_stack.failed |= not outcome.ok
    return outcome


async def judge(
    the_stack: Stack,
    scenario: Scenario,
    ctx: Context,
    monitor: Monitor,
    dsn: str,
    reference: float,
    bound: float,
) -> Outcome:
    """Every promise, as numbers and as a list of what broke."""
    out = Outcome(scenario.key, scenario.title, bound=bound, faults=ctx.faults)
    out.crashes = ctx.crashes
    out.exits = len(ctx.exits)
    if ctx.exits:
        out.problems.append(f"service processes exited on their own: {'; '.join(ctx.exits)}")
    rows, audit = await table(dsn)
    by_id = {row["id"]: row for row in rows}
    accepted = ctx.load.accepted
    out.accepted = len(accepted)
    problems = out.problems

    # 2. every accepted job terminal, in time
    lost = [j for j in accepted if j not in by_id or by_id[j]["status"] not in TERMINAL]
    out.lost = len(lost)
    if lost:
        states = [by_id[j]["status"] if j in by_id else "missing" for j in lost]
        problems.append(
            f"{len(lost)} accepted jobs not terminal: {list(zip(lost, states, strict=True))[:5]}"
        )
    done = [by_id[j] for j in accepted if j not in lost]
    out.terminal = len(done)
    out.completed = sum(outcome(r["status"]) == "completed" for r in done)
    out.failed = out.terminal - out.completed
    if done:
        last = max(r["completed_at"].timestamp() for r in done)
        out.t_after_fault = max(0.0, last - reference)
        if out.t_after_fault > bound:
            problems.append(f"a job took {out.t_after_fault:.1f}s after the last fault > T")

    # 3. one effect per job
    dup = {j for j, (terminals, after) in audit.items() if terminals > 1 or after > 0}
    dup |= monitor.changed
    file_errors, out.stray_files, out.tmp_files = check_files(ctx.app.media, rows)
    out.duplicated = len(dup) + len(file_errors)
    if dup:
        problems.append(
            f"{len(dup)} jobs with more than one terminal transition: {sorted(dup)[:5]}"
        )
    problems.extend(file_errors[:10])
    problems.extend(ctx.problems)
    stats = await the_stack.fake_stats()
    out.created = int(str(stats.get("created", 0)))
    out.attempts = sum(int(r["attempt"]) for r in rows)
    if ctx.cog is not None:  # no fake: the predictions the Cog servers started, and S10's checks
        problems.extend(check_cog(ctx.cog, rows, accepted, ctx.app.media, ctx.extra))
        out.created = len(ctx.cog.predictions().started)
    out.extra_creates = max(0, out.created - out.attempts)
    if out.extra_creates > ctx.crashes:
        problems.append(f"{out.extra_creates} extra upstream creates > {ctx.crashes} crashes")

    # 1. accepted means durable; answers: 201, or 503 only while Postgres is down (S6). A job
    # no 201 announced is acceptable only if one of its POSTs got no answer at all (the API
    # died mid-request); it must still finish.
    unacked = [r for r in rows if r["id"] not in accepted]
    out.unacked = len(unacked)
    unanswered = {p.index for p in ctx.load.posts if isinstance(p.status, str)}
    told = [r["id"] for r in unacked if _index(r["prompt"]) not in unanswered]
    if told:
        problems.append(f"{len(told)} jobs exist although their POSTs were answered: {told[:5]}")
    stuck = [r["id"] for r in unacked if r["status"] not in TERMINAL]
    if stuck:
        problems.append(f"{len(stuck)} unannounced jobs not terminal: {stuck[:5]}")
    _judge_answers(scenario, ctx, out)

    # S7: each upstream fault ends the way it must
    if scenario.expect is not None:
        wrong = [
            (r["prompt"], r["status"], (r["error"] or "")[:80])
            for j, r in ((j, by_id.get(j)) for j in accepted)
            if r is not None and r["status"] in TERMINAL
            if outcome(r["status"]) != scenario.expect(accepted[j])
        ]
        if wrong:
            problems.append(f"{len(wrong)} jobs ended unexpectedly: {wrong[:5]}")
    out.extra = " ".join(f"{k}={_fmt(v)}" for k, v in ctx.extra.items())
    return out


def _index(prompt: str) -> int:
    """The job index a prompt was made for (`chaos S1 job 17 ...`)."""
    match = re.match(r"chaos S\d+ job (\d+) ", prompt)
    return int(match.group(1)) if match else -1


def _judge_answers(scenario: Scenario, ctx: Context, out: Outcome) -> None:
    """201s everywhere; 503s only in S6; no answer only while the API itself was down."""
    api_down = [
        p
        for p in ctx.load.posts
        if isinstance(p.status, str)
        and any(p.started <= b and p.ended >= a for a, b in ctx.api_down)
    ]
    if api_down:
        ctx.extra["refused"] = len(api_down)
    posts: list[Post] = [p for p in ctx.load.posts if p not in api_down]
    tally = Counter(str(p.status) for p in posts)
    out.post_max = max((p.seconds for p in posts), default=0.0)
    s6 = scenario.key == "S6"
    bad = [p for p in posts if p.status not in (201, 503)]
    out.allowed_503 = sum(p.status == 503 for p in posts) if s6 else 0
    out.five_xx = (
        sum(isinstance(p.status, str) or int(p.status) >= 500 for p in posts) - out.allowed_503
    )
    if not s6:
        bad += [p for p in posts if p.status == 503]
    if bad:
        kinds = Counter(str(p.status) for p in bad)
        out.problems.append(f"{len(bad)} bad answers to POST (of {dict(tally)}): {dict(kinds)}")
    for down, up in ctx.outages:
        inside = [p for p in posts if p.started >= down and p.ended <= up]
        wrong = Counter(str(p.status) for p in inside if p.status != 503)
        if not inside or wrong:
            out.problems.append(
                f"{wrong.total()} of {len(inside)} POSTs while Postgres was down not 503: "
                f"{dict(wrong)}"
            )
        ctx.extra["in_outage"] = f"{len(inside) - wrong.total()}/{len(inside)}x503"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
