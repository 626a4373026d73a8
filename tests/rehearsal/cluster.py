"""The hosts, as real processes on their own loopback addresses (tests/rehearsal/topology.py):

| host | processes |
|---|---|
| postgres 127.0.0.2 | a private cluster (tests.chaos.procs.Postgres), as the `postgres` user |
| redis-a 127.0.0.3, redis-b 127.0.0.4 | a Redis (primary, replica) and a Sentinel each |
| sentinel-c 127.0.0.5 | the third Sentinel |
| api-1 127.0.0.6, api-2 127.0.0.7 | `mediagen api` (uvicorn), each as its host's user |
| balancer 127.0.0.8 | HAProxy (tests/rehearsal/balancer.py) |
| worker-1 127.0.0.9 | `mediagen worker` and `mediagen beat`, as its host's user |
| worker-2 127.0.0.10 | `mediagen worker`, as its host's user |
| client 127.0.0.11 | this process: the load's connections are bound to it |
| receiver 127.0.0.12 | python -m tests.rehearsal.receiver |

Every mediagen process gets every setting explicitly (tests.chaos.stack.clean_environ: the
project's `.env` never leaks in), the Sentinel settings included; storage is one local
directory every host sees (a shared volume).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from tests.chaos.measure import AUDIT_SQL
from tests.chaos.procs import Postgres, Proc, wait_until
from tests.chaos.stack import Timings, clean_environ, wait_worker
from tests.rehearsal import redis_ha
from tests.rehearsal.balancer import Balancer
from tests.rehearsal.redis_ha import RedisNode, Sentinel
from tests.rehearsal.topology import (
    API_1,
    API_2,
    API_PORT,
    BALANCER,
    BALANCER_PORT,
    MASTER,
    PG_PORT,
    POSTGRES,
    RECEIVER,
    RECEIVER_PORT,
    REDIS_A,
    REDIS_B,
    REDIS_PORT,
    SENTINEL_C,
    SENTINEL_PORT,
    SENTINELS,
    WORKER_1,
    WORKER_2,
    WORKER_METRICS_PORT,
    User,
    as_user,
    check_free,
    ensure_user,
    shared_dir,
    wait_port,
)

DATABASE = "mediagen"
WEBHOOK_SECRET = "whsec_cmVoZWFyc2FsLXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM="
BUILTIN_LATENCY = 1.0  # each job "renders" for a second: several are in flight at any time


@dataclass
class Host:
    """One machine: its address, its user, its processes. Killing it kills them all."""

    name: str
    address: str
    user: User | None
    procs: list[Proc] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL to every process (each one's whole process group), as a power cut would."""
        for proc in self.procs:
            proc.kill_group(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)

    def start(self) -> None:
        for proc in self.procs:
            proc.stop(5)  # reap what a kill left
            proc.start()


class Cluster:
    """Everything, in a scratch directory `root`."""

    def __init__(self, root: Path, timings: Timings) -> None:
        self.root, self.timings = root, timings
        root.chmod(0o755)  # the hosts' users (and `postgres`) must get in
        (root / "logs").mkdir(exist_ok=True)
        self.base_env = clean_environ()
        self.pg = Postgres(root, PG_PORT, self.base_env, host=POSTGRES)
        self.redis = {
            REDIS_A: RedisNode(root, self.base_env, REDIS_A, "redis-a"),
            REDIS_B: RedisNode(root, self.base_env, REDIS_B, "redis-b"),
        }
        self.redis[REDIS_B].replica_of(REDIS_A)
        self.sentinels = [Sentinel(root, self.base_env, host, REDIS_A) for host in SENTINELS]
        self.media = root / "media"
        shared_dir(self.media)  # every host writes (or reads) the shared volume
        self.receiver_log = root / "receiver.jsonl"
        receiver_cmd = [sys.executable, "-m", "tests.rehearsal.receiver", "--host", RECEIVER]
        receiver_cmd += ["--port", str(RECEIVER_PORT), "--log", str(self.receiver_log)]
        self.receiver = Proc(
            "receiver", receiver_cmd, self.base_env, root, root / "logs" / "receiver.log"
        )
        self.hosts: dict[str, Host] = {}
        for name, address in [("api-1", API_1), ("api-2", API_2)]:
            host = self._host(name, address)
            host.procs.append(self._proc(host, "api", ["api"], API_HOST=address))
        for name, address in [("worker-1", WORKER_1), ("worker-2", WORKER_2)]:
            host = self._host(name, address)
            host.procs.append(self._proc(host, "worker", ["worker"]))
        beat_host = self.hosts["worker-1"]
        beat_host.procs.append(self._proc(beat_host, "beat", ["beat"]))
        self.balancer = Balancer(root, self.base_env, {"api-1": API_1, "api-2": API_2})

    # --- configuration ---------------------------------------------------------------------
    def service_env(self, host: Host) -> dict[str, str]:
        """What every mediagen process of `host` is started with."""
        sentinels = ",".join(f"{address}:{SENTINEL_PORT}" for address in SENTINELS)
        return {
            **self.base_env,
            **self.timings.env(),
            "HOME": str(self.root / "hosts" / host.name),
            "DATABASE_URL": f"postgres://postgres@{POSTGRES}:{PG_PORT}/{DATABASE}",
            # The primary at start: what a deployment without Sentinel support would follow.
            "REDIS_URL": f"redis://{REDIS_A}:{REDIS_PORT}/0",
            "REDIS_SENTINELS": sentinels,
            "REDIS_SENTINEL_MASTER": MASTER,
            "REPLICATE_API_TOKEN": "",  # the built-in generator
            "BUILTIN_LATENCY": f"{BUILTIN_LATENCY:g}",
            "STORAGE_TYPE": "local",
            "LOCAL_STORAGE_PATH": str(self.media),
            "EMBEDDED_DATA_DIR": str(self.root / "hosts" / host.name),
            "PUBLIC_BASE_URL": f"http://{BALANCER}:{BALANCER_PORT}",
            "API_PORT": str(API_PORT),
            "WEB_CONCURRENCY": "1",
            "WORKER_CONCURRENCY": "8",
            "WORKER_METRICS_HOST": host.address,
            "WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_HOSTS": RECEIVER,
            "WEBHOOK_RETRY_DELAY": "1",
            "DB_POOL_MAX": "10",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "console",
            "DEBUG": "false",
        }

    def _host(self, name: str, address: str) -> Host:
        user = ensure_user(name)
        workdir = self.root / "hosts" / name
        workdir.mkdir(parents=True)
        os.chown(workdir, user.uid, user.gid)
        self.hosts[name] = host = Host(name, address, user)
        return host

    def _proc(self, host: Host, name: str, args: list[str], **env: str) -> Proc:
        assert host.user is not None
        cmd = as_user(host.user, [sys.executable, "-m", "mediagen", *args])
        environment = {**self.service_env(host), **env}
        log = self.root / "logs" / f"{host.name}-{name}.log"
        return Proc(f"{host.name}/{name}", cmd, environment, self.root / "hosts" / host.name, log)

    @property
    def dsn(self) -> str:
        return self.pg.dsn(DATABASE)

    @property
    def workers(self) -> dict[str, Proc]:
        return {name: self.hosts[name].procs[0] for name in ("worker-1", "worker-2")}

    def procs(self) -> list[Proc]:
        """Every service process (what the watchdog keeps running)."""
        found = [p for host in self.hosts.values() for p in host.procs]
        return [*found, self.receiver, self.balancer.proc]

    # --- start -----------------------------------------------------------------------------
    def ports(self) -> list[tuple[str, int]]:
        pairs = [(POSTGRES, PG_PORT), (REDIS_A, REDIS_PORT), (REDIS_B, REDIS_PORT)]
        pairs += [(address, SENTINEL_PORT) for address in (REDIS_A, REDIS_B, SENTINEL_C)]
        pairs += [(API_1, API_PORT), (API_2, API_PORT), (BALANCER, BALANCER_PORT)]
        pairs += [(WORKER_1, WORKER_METRICS_PORT), (WORKER_2, WORKER_METRICS_PORT)]
        return [*pairs, (RECEIVER, RECEIVER_PORT)]

    async def start(self) -> None:
        if taken := check_free(self.ports()):
            raise RuntimeError(f"already in use: {', '.join(taken)} (a previous run left?)")
        await asyncio.to_thread(self.pg.init)
        await asyncio.to_thread(self.pg.start)
        await self._database()
        await asyncio.to_thread(self._redis)
        self.receiver.start()
        await asyncio.to_thread(
            wait_until, lambda: wait_port(RECEIVER, RECEIVER_PORT), 30, "the receiver"
        )
        for host in self.hosts.values():
            host.start()
        await asyncio.gather(
            *(self.worker_ready(name) for name in self.workers),
            *(self.api_ready(name) for name in ("api-1", "api-2")),
        )
        await asyncio.to_thread(self.balancer.start)
        for server in ("api-1", "api-2"):
            await asyncio.to_thread(self.balancer.wait_state, server, "UP", 30)

    async def _database(self) -> None:
        """The database, migrated as a deploy would (once, before the services start), with
        the chaos suite's audit trigger on `jobs`."""
        admin = await asyncpg.connect(self.pg.dsn(), timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()
        env = self.service_env(self.hosts["api-1"])
        migrate = [sys.executable, "-m", "mediagen", "migrate"]
        done = await asyncio.to_thread(
            subprocess.run, migrate, cwd=self.root, env=env, capture_output=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate failed: {done.stderr.decode(errors='replace')[-2000:]}")
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            await conn.execute(AUDIT_SQL)
        finally:
            await conn.close()

    def _redis(self) -> None:
        for node in self.redis.values():
            node.start()
        for sentinel in self.sentinels:
            sentinel.start()
        redis_ha.wait_settled(REDIS_A, REDIS_B, timeout=60)

    async def worker_ready(self, name: str, timeout: float = 60) -> None:
        url = await asyncio.to_thread(redis_ha.master_url)
        await wait_worker(url, self.workers[name], timeout)

    async def api_ready(self, name: str, timeout: float = 60) -> None:
        address = self.hosts[name].address
        proc = self.hosts[name].procs[0]

        def live() -> bool:
            return httpx.get(f"http://{address}:{API_PORT}/livez", timeout=2).status_code == 200

        await asyncio.to_thread(wait_until, live, timeout, f"{name} to answer", proc)

    async def restart_host(self, name: str) -> None:
        """Start a killed host again and wait until it serves."""
        host = self.hosts[name]
        await asyncio.to_thread(host.start)
        if name in self.workers:
            await self.worker_ready(name)
        else:
            await self.api_ready(name)

    def stop(self) -> None:
        """The service processes, all at once (SIGKILL after 10 s); the servers are left to
        tests.chaos.procs.stop_all, which stops whatever is left, also after a failed run."""
        threads = [threading.Thread(target=proc.stop, args=(10,)) for proc in self.procs()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
