"""Redis servers of the failover tests' own, on fixed ports of their own (6390-6399, Sentinels
26390-26399): a primary, a replica and three Sentinels that fail over within seconds, a
TLS-only Redis, and a plain Redis to restart or stop. Started only by the tests that ask for
them (`tests/redis_failover/conftest.py`); the session's Redis is never touched.

Sentinel fails over after DOWN_AFTER_MS without an answer from the primary; a killed or demoted
primary is brought back as a replica of the new one, so each test finds a primary and a
replica that Sentinel could fail over to again.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis

from tests.stack import TMP
from tests.support import Proc, wait_for

HOST = "127.0.0.1"
DATA_PORTS = (6390, 6391)  # primary and replica (which is which changes with each failover)
SENTINEL_PORTS = (26390, 26391, 26392)
TLS_PORT = 6393
PLAIN_PORT = 6394
PROXY_PORT = 6395
TLS_SENTINEL_DATA_PORT, TLS_SENTINEL_PORT = 6396, 26396
MASTER = "mymaster"
# The group's servers and Sentinels ask for passwords, as any in production would.
DATA_PASSWORD, SENTINEL_PASSWORD = "data-secret", "sentinel-secret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
BINARY = shutil.which("redis-server") or "redis-server"


def _start(name: str, args: list[str]) -> Proc:
    return Proc.start(name, [BINARY, *args], TMP / "redis-failover" / f"{name}.log")


def _answers(port: int, **options: Any) -> bool:
    try:
        with contextlib.closing(redis.Redis(HOST, port, socket_timeout=1, **options)) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def data_server(port: int, *extra: str, password: str = "") -> Proc:
    """A `redis-server` on `port` (nothing kept on disk), answering once this returns."""
    workdir = TMP / "redis-failover" / str(port)
    workdir.mkdir(parents=True, exist_ok=True)
    proc = _start(f"redis-{port}", [
        "--port", str(port), *extra, "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--databases", "64",
        *(["--requirepass", password, "--masterauth", password] if password else [])])
    if "--tls-port" not in extra:
        wait_for(lambda: _answers(port, password=password or None), 10, proc,
                 f"redis-server on {port}")
    return proc


def _tls_files(directory: Path) -> tuple[Path, list[str]]:
    """A throwaway CA (trustme) and a certificate it signed for HOST, written to `directory`:
    the CA's file (REDIS_TLS_CA_FILE), and the TLS options of a server using them."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem", "key.pem"))
    if not ca_file.exists():
        authority = trustme.CA()
        server_cert = authority.issue_cert(HOST, "localhost")
        authority.cert_pem.write_to_path(str(ca_file))
        server_cert.cert_chain_pems[0].write_to_path(str(cert_file))
        server_cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
                     "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"]


def _tls_data_server(port: int, directory: Path) -> tuple[Proc, Path]:
    ca_file, options = _tls_files(directory)
    proc = data_server(port, "--port", "0", "--tls-port", str(port), "--tls-replication",
                       "yes", *options)
    tls = {"ssl": True, "ssl_ca_certs": str(ca_file)}
    wait_for(lambda: _answers(port, **tls), 10, proc, f"TLS redis-server on {port}")
    return proc, ca_file


def tls_server(directory: Path) -> tuple[Proc, Path]:
    """A TLS-only Redis on TLS_PORT: the server and the CA file that verifies it."""
    return _tls_data_server(TLS_PORT, directory)


def tls_sentinel(directory: Path) -> list[Proc]:
    """A TLS-only Redis on TLS_SENTINEL_DATA_PORT and a TLS-only Sentinel watching it as
    MASTER on TLS_SENTINEL_PORT (the certificates of `tls_server`)."""
    data, _ = _tls_data_server(TLS_SENTINEL_DATA_PORT, directory)
    _, options = _tls_files(directory)
    conf = directory / "sentinel.conf"
    conf.write_text("\n".join([
        "port 0", f"tls-port {TLS_SENTINEL_PORT}", f"bind {HOST}", f"dir {directory}",
        "tls-replication yes", f"sentinel monitor {MASTER} {HOST} {TLS_SENTINEL_DATA_PORT} 1",
        *(f"{name.removeprefix('--')} {value}" for name, value in zip(
            options[::2], options[1::2], strict=True)), ""]))
    sentinel = _start("sentinel-tls", [str(conf), "--sentinel"])
    return [sentinel, data]


class SentinelGroup:
    """A primary, a replica and three Sentinels watching them as MASTER."""

    def __init__(self) -> None:
        self.data: dict[int, Proc] = {}
        self.sentinels: list[Proc] = []
        self._databases = itertools.count(1)

    def start(self) -> SentinelGroup:
        first, second = DATA_PORTS
        self.data[first] = data_server(first, password=DATA_PASSWORD)
        self.data[second] = data_server(second, "--replicaof", HOST, str(first),
                                        password=DATA_PASSWORD)
        for port in SENTINEL_PORTS:
            conf = TMP / "redis-failover" / f"sentinel-{port}.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("\n".join([
                f"port {port}", f"bind {HOST}", f"dir {conf.parent}",
                f"sentinel monitor {MASTER} {HOST} {first} 2",
                f"sentinel auth-pass {MASTER} {DATA_PASSWORD}",
                f"requirepass {SENTINEL_PASSWORD}", f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1", ""]))
            self.sentinels.append(_start(f"sentinel-{port}", [str(conf), "--sentinel"]))
        self.wait_healthy()
        return self

    def env(self, **extra: str) -> dict[str, str]:
        """Settings for mediagen's processes: through the Sentinels, in a database of the
        caller's own."""
        return {
            "REDIS_URL": f"redis://:{DATA_PASSWORD}@{MASTER}/{next(self._databases)}",
            "REDIS_SENTINELS": ",".join(f"{HOST}:{port}" for port in SENTINEL_PORTS),
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            **extra,
        }

    def sentinel(self, port: int = SENTINEL_PORTS[0]) -> redis.Redis:
        return redis.Redis(HOST, port, socket_timeout=1, decode_responses=True,
                           password=SENTINEL_PASSWORD)

    def node(self, port: int, db: int = 0) -> redis.Redis:
        """A plain client of one of the two servers (whichever role it has now)."""
        return redis.Redis(HOST, port, db=db, socket_timeout=1, password=DATA_PASSWORD)

    def primary_port(self, sentinel: int = SENTINEL_PORTS[0]) -> int:
        """The primary's port, as a Sentinel says."""
        with contextlib.closing(self.sentinel(sentinel)) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)

    def role(self, port: int) -> str:
        with contextlib.closing(self.node(port)) as client:
            return str(client.execute_command("ROLE")[0].decode())

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every Sentinel agrees on the primary, knows the other two and sees the replica in
        sync (so that a failover can pick it)."""
        def healthy() -> bool:
            try:
                primaries = {self.primary_port(port) for port in SENTINEL_PORTS}
                if len(primaries) != 1:
                    return False
                (primary,) = primaries
                if self.role(primary) != "master":
                    return False
                for port in SENTINEL_PORTS:
                    with contextlib.closing(self.sentinel(port)) as client:
                        state = client.sentinel_master(MASTER)
                        replicas = client.sentinel_slaves(MASTER)
                    if state["num-other-sentinels"] < 2 or state["flags"] != "master":
                        return False
                    if not any(r["flags"] == "slave" and r["master-link-status"] == "ok"
                               for r in replicas):
                        return False
                return True
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                return False

        wait_for(healthy, timeout, what="Sentinel group healthy")

    def wait_primary_moved(self, old: int, timeout: float = 20) -> int:
        """Wait until every Sentinel names a primary other than `old`; its port."""
        def moved() -> bool:
            try:
                return all(self.primary_port(port) != old for port in SENTINEL_PORTS)
            except (redis.ConnectionError, redis.TimeoutError):
                return False

        wait_for(moved, timeout, what=f"a failover away from {old}")
        return self.primary_port()

    def kill_primary(self) -> tuple[int, float]:
        """SIGKILL the primary; return once Sentinel promoted the replica: (the new primary's
        port, seconds from the kill to the promotion)."""
        old = self.primary_port()
        proc = self.data.pop(old)
        killed = time.monotonic()
        proc.stop(signal.SIGKILL)
        new = self.wait_primary_moved(old)
        return new, time.monotonic() - killed

    def restore(self) -> None:
        """Start again a killed primary, as a replica of the new one; wait until all is well."""
        primary = self.primary_port()
        for port in DATA_PORTS:
            if port not in self.data:
                self.data[port] = data_server(port, "--replicaof", HOST, str(primary),
                                              password=DATA_PASSWORD)
        self.wait_healthy()

    def failover(self) -> int:
        """SENTINEL FAILOVER with both servers up (the primary is demoted, not lost); the new
        primary's port once the old one has turned replica."""
        old = self.primary_port()
        with contextlib.closing(self.sentinel()) as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER)
        new = self.wait_primary_moved(old)
        wait_for(lambda: self.role(old) == "slave", 20, what=f"{old} demoted")
        return new

    def client(self, db: int | str = 0) -> redis.Redis:
        """A plain client of the primary of the moment (for the test's own checks)."""
        return self.node(self.primary_port(), int(db))

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.data.values()]:
            proc.stop(signal.SIGKILL, timeout=5)


class PlainRedis:
    """A plain Redis on PLAIN_PORT, to restart or flush."""

    def __init__(self) -> None:
        self.proc: Proc = data_server(PLAIN_PORT)

    def url(self, db: int, port: int = PLAIN_PORT) -> str:
        return f"redis://{HOST}:{port}/{db}"

    def restart(self) -> None:
        """SIGKILL, then start again with nothing (no persistence)."""
        self.proc.stop(signal.SIGKILL)
        self.proc = data_server(PLAIN_PORT)


class SilentProxy:
    """A TCP proxy in front of a Redis that can fall silent: `cut()` stops carrying bytes
    either way and closes its connections to the server (which forgets those clients), while
    the clients' ends stay open and are never answered, as a host that died or a dropped NAT
    entry leaves them: half-open. Connections made after the cut are carried again."""

    def __init__(self, port: int, upstream: int) -> None:
        self.port, self.upstream = port, upstream
        self._listener = socket.create_server((HOST, port), reuse_port=False)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((HOST, self.upstream), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data or source in self._held or target in self._held:
                    return
                target.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            self._held.append(client)  # open, and silent, until the proxy stops
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()

    def stop(self) -> None:
        self._listener.close()
        self.cut()
        for client in self._held:
            client.close()
