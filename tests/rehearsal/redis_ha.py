"""Redis that fails over: a primary and a replica (tests.chaos.procs.Redis: no persistence) and
three Sentinels (`redis-server sentinel.conf --sentinel`), each on its host's address.

Every node announces its own address and binds its outgoing connections to it, so that what the
Sentinels learn (replicas from INFO, each other from hello messages) names 127.0.0.3-5 and never
127.0.0.1, where the machine's own Redis listens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from tests.chaos.procs import Proc, Redis, redis_binary, wait_until
from tests.rehearsal.topology import MASTER, REDIS_PORT, SENTINEL_PORT, SENTINELS

DOWN_AFTER_MS = 2000  # a primary silent this long is down (SDOWN; ODOWN once 2 agree)
FAILOVER_TIMEOUT_MS = 10000


def _announced(host: str) -> tuple[str, ...]:
    # Protected mode admits 127.0.0.1 only, not the rest of 127.0.0.0/8 that the other nodes
    # connect from; every node listens on a loopback address alone anyway.
    return ("--replica-announce-ip", host, "--bind-source-addr", host, "--protected-mode", "no")


class RedisNode(Redis):
    """A primary or a replica on `host`; `restart_as_replica_of` starts a killed one again
    under the new primary (it has no data: no persistence)."""

    def __init__(self, root: Path, env: dict[str, str], host: str, name: str) -> None:
        super().__init__(root, REDIS_PORT, env, host=host, name=name, args=_announced(host))
        self.base_cmd = list(self.proc.cmd)

    def replica_of(self, host: str) -> None:
        """Its next start is as a replica of `host` (the command line says so)."""
        self.proc.cmd = [*self.base_cmd, "--replicaof", host, str(REDIS_PORT)]

    def restart_as_replica_of(self, host: str) -> None:
        self.proc.stop(5)
        self.replica_of(host)
        self.start()


class Sentinel:
    """One Sentinel watching MASTER (quorum 2 of 3)."""

    def __init__(self, root: Path, env: dict[str, str], host: str, primary: str) -> None:
        self.host = host
        workdir = root / f"sentinel-{host}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "sentinel.conf"  # Sentinel rewrites it as it learns: writable
        conf.write_text(
            f"port {SENTINEL_PORT}\n"
            f"bind {host}\n"
            f"bind-source-addr {host}\n"
            f"dir {workdir}\n"
            f"sentinel announce-ip {host}\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {MASTER} {primary} {REDIS_PORT} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        cmd = [redis_binary(), str(conf), "--sentinel"]
        self.proc = Proc(
            f"sentinel-{host}", cmd, env, workdir, root / "logs" / f"sentinel-{host}.log"
        )

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: command(self.host, SENTINEL_PORT, "PING"), 15, "a Sentinel", self.proc)


def _client(host: str, port: int) -> redis.Redis:
    return redis.Redis(
        host=host, port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True
    )


def command(host: str, port: int, *args: str) -> Any:
    """One command on a connection of its own (closed at once)."""
    client = _client(host, port)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def master() -> str | None:
    """The primary's address as a majority of the Sentinels name it (None: no majority)."""
    votes: dict[str, int] = {}
    for host in SENTINELS:
        client = _client(host, SENTINEL_PORT)
        try:
            named = client.sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            continue
        finally:
            client.close()
        if named:
            votes[named[0]] = votes.get(named[0], 0) + 1
    best = max(votes.items(), key=lambda item: item[1], default=None)
    return best[0] if best and best[1] >= 2 else None


def master_url() -> str:
    return f"redis://{master()}:{REDIS_PORT}/0"


def role(host: str) -> str | None:
    """`master` or `slave` as the node at `host` says (None: it does not answer)."""
    try:
        reply = command(host, REDIS_PORT, "ROLE")
    except redis.RedisError:
        return None
    return str(reply[0]) if reply else None


def settled(primary: str, replica: str) -> bool:
    """Every Sentinel names `primary`, knows the other two and `replica` as its replica, and
    `replica` has finished its sync."""
    for host in SENTINELS:
        client = _client(host, SENTINEL_PORT)
        try:
            named = client.sentinel_get_master_addr_by_name(MASTER)
            peers = client.sentinel_sentinels(MASTER)
            replicas = client.sentinel_slaves(MASTER)
        except redis.RedisError:
            return False
        finally:
            client.close()
        if not named or named[0] != primary or len(peers) != 2:
            return False
        if not any(r["ip"] == replica and not r["is_sdown"] for r in replicas):
            return False
    try:
        info = command(replica, REDIS_PORT, "INFO", "replication")
    except redis.RedisError:
        return False
    return info.get("master_link_status") == "up"


def wait_settled(primary: str, replica: str, timeout: float = 60) -> float:
    """Seconds until `settled(primary, replica)`; TimeoutError past `timeout`."""
    started = time.monotonic()
    wait_until(lambda: settled(primary, replica), timeout, f"Sentinels to settle on {primary}")
    return time.monotonic() - started
