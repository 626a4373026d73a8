"""The faults, one after another under the steady load, each followed by a wait until the
service is whole again (`wait_recovered`), bounded by RECOVERY_TIMEOUT:

1. worker-1 host killed (its worker and beat, SIGKILL), started again 10 s later;
2. worker-2 cut off from Redis (primary, replica, Sentinels) for 30 s, packets dropped;
3. the Redis primary killed (SIGKILL): the Sentinels promote the replica; once the service
   recovered without it, the old primary is started again as a replica of the new one;
4. Postgres restarted: fast shutdown, down PG_DOWN seconds, started again;
5. api-2 host killed (SIGKILL): HAProxy takes it out; started again once recovered.

"Whole again": every job accepted before the fault ended is finished, at least 80 % of the
offered rate finished in the last STEADY_WINDOW seconds, and every worker host took a task
after the fault ended (a worker that stays connected but stops consuming is a known Celery
failure after a reconnect). Then the worker hosts' own probes (`/readyz` on their port) must
agree within PROBE_GRACE seconds: a worker that takes tasks must say it is ready.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from tests.chaos.load import Load
from tests.chaos.measure import Monitor
from tests.rehearsal import netcut, redis_ha
from tests.rehearsal.cluster import Cluster
from tests.rehearsal.topology import REDIS_ADDRESSES, WORKER_METRICS_PORT

RECOVERY_TIMEOUT = 120.0
STEADY_WINDOW = 5.0
STEADY_SHARE = 0.8
WORKER_PAUSE = 10.0  # a killed worker host is started again after this long
CUT_SECONDS = 30.0
PG_DOWN = 5.0
API_PAUSE = 10.0
PROBE_GRACE = 15.0


@dataclass
class Fault:
    key: str
    title: str
    started: float = 0.0  # wall clock: the fault
    ended: float = 0.0  # wall clock: what it broke is back (restarted, healed, failed over)
    recovered: float | None = None  # wall clock: the service was whole again
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    """What the faults act on and report into."""

    cluster: Cluster
    load: Load
    monitor: Monitor
    rate: float
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    planned: set[str] = field(default_factory=set)  # processes down on purpose, by name
    watches: dict[str, TaskLog] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, proc in self.cluster.workers.items():
            self.watches[name] = TaskLog(proc.log)


_RECEIVED = re.compile(rb"^(\S+Z) \[[a-z ]+\] Task mediagen\.\S+ received", re.MULTILINE)


class TaskLog:
    """When a worker received its tasks, read from its log as it grows."""

    def __init__(self, log: Path) -> None:
        self.log, self.offset, self.times = log, 0, list[float]()

    def received_since(self, since: float) -> float | None:
        """The first time a task arrived at or after `since` (wall clock), if any yet."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            data = b""
        end = data.rfind(b"\n") + 1  # whole lines only
        for match in _RECEIVED.finditer(data[:end]):
            self.times.append(datetime.fromisoformat(match[1].decode()).timestamp())
        self.offset += end
        return next((t for t in self.times if t >= since), None)


async def wait_recovered(run: Run, fault: Fault) -> None:
    """Until the service is whole again after `fault` (see the module's docstring)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while True:
        now = time.time()
        before = [p.job_id for p in run.load.posts if p.job_id and p.ended <= fault.ended]
        drained = all(job in run.monitor.first for job in before)
        recent = sum(
            1
            for _, done in run.monitor.first.values()
            if done is not None and done.timestamp() >= now - STEADY_WINDOW
        )
        steady = recent >= STEADY_SHARE * run.rate * STEADY_WINDOW
        idle = [n for n, w in run.watches.items() if w.received_since(fault.ended) is None]
        if drained and steady and not idle:
            fault.recovered = now
            await _probes_agree(run, fault)
            return
        if time.monotonic() > deadline:
            why = []
            if not drained:
                left = [job for job in before if job not in run.monitor.first]
                why.append(f"{len(left)} jobs accepted before it ended not finished: {left[:3]}")
            if not steady:
                why.append(f"{recent} jobs finished in the last {STEADY_WINDOW:g} s")
            if idle:
                why.append(f"no task taken since by {', '.join(idle)}")
            run.problems.append(
                f"{fault.key}: not recovered {RECOVERY_TIMEOUT:g} s after it: {'; '.join(why)}"
            )
            return
        await asyncio.sleep(0.5)


def worker_probe(address: str) -> str:
    """A worker host's `/readyz` as `200`, `503: <why>`, or the error."""
    try:
        reply = httpx.get(f"http://{address}:{WORKER_METRICS_PORT}/readyz", timeout=2)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return "200" if reply.status_code == 200 else f"{reply.status_code}: {reply.text[:120]}"


async def _probes_agree(run: Run, fault: Fault) -> None:
    """Every worker host takes tasks again: its readiness probe must say so, soon."""
    addresses = {name: run.cluster.hosts[name].address for name in run.cluster.workers}
    deadline = time.monotonic() + PROBE_GRACE
    while True:
        answers = {n: await asyncio.to_thread(worker_probe, a) for n, a in addresses.items()}
        wrong = {n: a for n, a in answers.items() if a != "200"}
        if not wrong:
            return
        if time.monotonic() > deadline:
            run.problems.append(
                f"{fault.key}: worker probes still not ready {PROBE_GRACE:g} s after the "
                f"workers took tasks again: {wrong}"
            )
            return
        await asyncio.sleep(0.5)


async def kill_worker_host(run: Run, fault: Fault) -> None:
    host = run.cluster.hosts["worker-1"]
    run.planned.update(p.name for p in host.procs)
    fault.started = time.time()
    await asyncio.to_thread(host.kill)
    await asyncio.sleep(max(0.0, fault.started + WORKER_PAUSE - time.time()))
    await run.cluster.restart_host("worker-1")
    run.planned.difference_update(p.name for p in host.procs)
    fault.ended = time.time()


async def cut_worker(run: Run, fault: Fault) -> None:
    user = run.cluster.hosts["worker-2"].user
    assert user is not None
    fault.started = time.time()
    await asyncio.to_thread(netcut.cut, user.uid, REDIS_ADDRESSES)
    try:
        await asyncio.sleep(CUT_SECONDS)
    finally:
        await asyncio.to_thread(netcut.heal)
    fault.ended = time.time()


async def kill_redis_primary(run: Run, fault: Fault) -> None:
    primary = await asyncio.to_thread(redis_ha.master)
    assert primary is not None, "no Redis primary named by the Sentinels"
    replica = next(host for host in run.cluster.redis if host != primary)
    node = run.cluster.redis[primary]
    fault.started = time.time()
    node.proc.kill_group(signal.SIGKILL)
    await asyncio.to_thread(node.proc.wait, 10)

    def promoted() -> bool:
        return redis_ha.master() == replica and redis_ha.role(replica) == "master"

    await _until(promoted, 60, "the Sentinels to promote the replica")
    fault.ended = time.time()
    fault.notes.append(f"{replica} promoted after {fault.ended - fault.started:.1f} s")


async def restore_redis_replica(run: Run, fault: Fault) -> None:
    """After the recovery (the old primary may stay away long: the service must not need
    it): the old primary started again, as a replica of the new one."""
    primary = await asyncio.to_thread(redis_ha.master)
    assert primary is not None, "no Redis primary named by the Sentinels"
    old = next(host for host in run.cluster.redis if host != primary)
    await asyncio.to_thread(run.cluster.redis[old].restart_as_replica_of, primary)
    synced = await asyncio.to_thread(redis_ha.wait_settled, primary, old, 60)
    fault.notes.append(f"old primary back as its replica {synced:.1f} s after its restart")


async def restart_postgres(run: Run, fault: Fault) -> None:
    pg = run.cluster.pg
    fault.started = time.time()
    await asyncio.to_thread(pg.stop)
    await asyncio.sleep(max(0.0, fault.started + PG_DOWN - time.time()))
    await asyncio.to_thread(pg.start)
    fault.ended = time.time()


async def kill_api_host(run: Run, fault: Fault) -> None:
    host = run.cluster.hosts["api-2"]
    balancer = run.cluster.balancer
    run.planned.update(p.name for p in host.procs)
    fault.started = time.time()
    await asyncio.to_thread(host.kill)
    await _until(lambda: balancer.states().get("api-2", "").startswith("DOWN"), 30, "HAProxy")
    fault.ended = time.time()
    fault.notes.append(f"HAProxy took it out after {fault.ended - fault.started:.1f} s")


async def restart_api_host(run: Run, fault: Fault) -> None:
    """After the recovery: api-2 started again, and back in HAProxy."""
    host = run.cluster.hosts["api-2"]
    await asyncio.sleep(max(0.0, fault.started + API_PAUSE - time.time()))
    await run.cluster.restart_host("api-2")
    run.planned.difference_update(p.name for p in host.procs)
    began = time.time()
    await _until(lambda: run.cluster.balancer.states().get("api-2") == "UP", 30, "api-2 UP")
    fault.notes.append(f"restarted, back in HAProxy {time.time() - began:.1f} s later")


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(check):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.1)


Step = Callable[[Run, Fault], Awaitable[None]]

# (key, title, inject, after the recovery)
FAULTS: list[tuple[str, str, Step, Step | None]] = [
    (
        "F1",
        "worker-1 host killed (worker + beat, SIGKILL), back after 10 s",
        kill_worker_host,
        None,
    ),
    ("F2", "worker-2 cut off from Redis for 30 s (iptables DROP)", cut_worker, None),
    (
        "F3",
        "Redis primary killed (SIGKILL), Sentinel failover",
        kill_redis_primary,
        restore_redis_replica,
    ),
    ("F4", f"Postgres restarted (fast shutdown, {PG_DOWN:g} s down)", restart_postgres, None),
    ("F5", "api-2 host killed (SIGKILL), HAProxy takes it out", kill_api_host, restart_api_host),
]


async def run_faults(run: Run, keys: list[str], baseline: float) -> None:
    """`baseline` seconds of load, then each fault in `keys`, in order, with its recovery."""
    await asyncio.sleep(baseline)
    for key, title, inject, after in FAULTS:
        if key not in keys:
            continue
        fault = Fault(key, title)
        run.faults.append(fault)
        print(f"rehearsal: {key} {title}", flush=True)
        try:
            await inject(run, fault)
        except Exception as exc:  # the fault could not be made or repaired: this run fails
            fault.ended = fault.ended or time.time()
            run.problems.append(f"{key}: {type(exc).__name__}: {exc}")
        await wait_recovered(run, fault)
        if fault.recovered is None:  # what follows would measure this fault, not its own
            skipped = [k for k, *_ in FAULTS if k in keys and k > key]
            if skipped:
                run.problems.append(f"not made after {key} did not recover: {skipped}")
            return
        print(
            f"rehearsal: {key} recovered {fault.recovered - fault.started:.1f} s after it",
            flush=True,
        )
        if after is not None:
            try:
                await after(run, fault)
            except Exception as exc:
                run.problems.append(f"{key}: {type(exc).__name__}: {exc}")
