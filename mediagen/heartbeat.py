"""Worker heartbeats, and what they say about a worker.

Every worker process with a runtime (a threads worker's only process, a prefork worker's main
process and each child) writes `{host}:{pid}` with the time into the sorted set WORKERS every
HEARTBEAT_TTL / 3 seconds, from its event loop (`mediagen.worker_services.Worker`). A heartbeat
older than HEARTBEAT_TTL means that loop is stuck or its process gone. The API counts the fresh ones
(`/api/v1/health`); a worker's own readiness (`GET /readyz` on its port) reads its own; and
`mediagen worker-check`, a probe run beside the worker, reads those of its host.

Reading one needs the broker (Redis) to answer, so a fresh heartbeat read now also says the
broker is reachable from here. These are synchronous: they run in the exporter's threads and
in a command, never on an event loop.
"""

from __future__ import annotations

import os
import socket
import time
from typing import NamedTuple, cast

import redis

from mediagen import redis_clients
from mediagen.broker import HEARTBEAT_TTL, WORKERS
from mediagen.config import Settings


class Verdict(NamedTuple):
    """A probe's answer: healthy or not, and why, in one line."""

    ok: bool
    reason: str


def member() -> str:
    """This process's name in WORKERS."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _age(score: float, now: float | None) -> float:
    return max(0.0, (now or time.time()) - score)


def _stale(who: str, age: float) -> Verdict:
    return Verdict(False, f"the heartbeat of {who} is {age:.0f} s old (over {HEARTBEAT_TTL} s)")


def _unreachable(exc: redis.RedisError) -> Verdict:
    """Why, as redis-py says it (its address, never its password), on one line."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Verdict(False, f"the broker does not answer ({said}): is Redis running? set REDIS_URL")


def own(client: redis.Redis, name: str, now: float | None = None) -> Verdict:
    """The heartbeat of the process `name` (`member()`) is fresh."""
    try:
        score = client.zscore(WORKERS, name)
    except redis.RedisError as exc:
        return _unreachable(exc)
    if score is None:
        return Verdict(False, f"no heartbeat from {name}")
    age = _age(float(score), now)
    if age > HEARTBEAT_TTL:
        return _stale(name, age)
    return Verdict(True, f"{name} beat {age:.1f} s ago")


def of_host(client: redis.Redis, host: str | None = None, now: float | None = None) -> Verdict:
    """A worker process on `host` (this machine, or this container) has a fresh heartbeat."""
    host = host or socket.gethostname()
    try:
        entries = cast(list[tuple[bytes, float]], client.zrange(WORKERS, 0, -1, withscores=True))
    except redis.RedisError as exc:
        return _unreachable(exc)
    found = [(raw.decode(), float(score)) for raw, score in entries]
    ours = [(name, score) for name, score in found if name.rpartition(":")[0] == host]
    if not ours:
        return Verdict(False, f"no heartbeat from a worker process on {host}")
    name, score = max(ours, key=lambda entry: entry[1])
    age = _age(score, now)
    if age > HEARTBEAT_TTL:
        return _stale(f"the workers on {host}", age)
    return Verdict(True, f"{name} beat {age:.1f} s ago")


def check_host(settings: Settings, host: str | None = None) -> Verdict:
    """`of_host` through a connection of its own (`mediagen worker-check`)."""
    client = redis_clients.sync_client(
        settings, "mediagen-worker-check", timeout=2, connect_timeout=2
    )
    try:
        return of_host(client, host)
    finally:
        client.close()
