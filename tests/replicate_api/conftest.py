"""The stack the official `replicate` clients (Python and JavaScript) are driven against: real
processes, nothing faked.

- `tls`: an API under uvicorn over HTTPS (a certificate made for the test, trusted by the clients
  as a private CA), AUTH_REQUIRED=true, on a worker of its own (built-in generator, 0.2 s per
  job). HTTPS matters: both clients turn only `https:` output URLs into file objects.
- `limited`: a plain-HTTP API on the same queue whose reads are limited to READS per minute.
- `slow`: a plain-HTTP API on a worker of its own whose jobs take SLOW seconds (cancel, and
  `Prefer: wait` running out).
Loopback webhooks are allowed (WEBHOOK_ALLOW_HOSTS=127.0.0.1) and land in `receiver`.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ROOT, TMP, scratch_redis, start_api, start_worker
from tests.files.tls import make_certificate
from tests.receiver import Receiver, receiving
from tests.support import Proc, free_port, wait_for

READS = 3  # reads per minute per key on the `limited` API
SLOW = 5.0  # seconds a job of the `slow` stack takes
NAMES = ("alice", "bob", "lister", "carol", "jsuser", "jslister", "jsreader")


@dataclass
class Key:
    secret: str
    webhook_secret: str


@dataclass
class Stack:
    tls: str  # https://127.0.0.1:<port>
    limited: str
    slow: str
    cert: Path
    keys: dict[str, Key]
    receiver: Receiver

    def verify(self) -> ssl.SSLContext:
        """Trusts the test's certificate."""
        return _context(self.cert)

    def https(self) -> httpx.HTTPTransport:
        """A transport that trusts the test's certificate (the replicate client wraps it)."""
        return httpx.HTTPTransport(verify=self.verify())


def _context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _create_key(name: str) -> Key:
    """`mediagen keys create NAME`: the secret (second line) and the key's webhook secret."""
    out = subprocess.run([sys.executable, "-m", "mediagen", "keys", "create", name], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    webhook = next(line.rsplit(" ", 1)[1] for line in lines if line.startswith("webhook secret"))
    return Key(lines[1], webhook)


def _start_tls_api(name: str, env: dict[str, str], cert: Path, key: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc.start(
        name,
        ["python", "-m", "uvicorn", "mediagen.main:app", "--host", "127.0.0.1", "--port",
         str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        TMP / f"{name}.log",
        {"API_PORT": str(port), **env},
    )
    url = f"https://127.0.0.1:{port}"
    context = _context(cert)

    def up() -> bool:
        try:
            return httpx.get(f"{url}/openapi.json", timeout=1, verify=context).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, proc, f"{name} listening")
    return proc, url


@pytest.fixture(scope="package")
def receiver() -> Iterator[Receiver]:
    """Records every POST (the tests use /hook/{name}) and answers 204."""
    with receiving() as rec:
        yield rec


@pytest.fixture(scope="package")
def stack(database: str, receiver: Receiver) -> Iterator[Stack]:
    cert_dir = TMP / "replicate-tls"
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(cert_dir)
    common = {"AUTH_REQUIRED": "true", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
              "WEBHOOK_RETRY_DELAY": "0.5"}
    main_url, slow_url = scratch_redis(3), scratch_redis(2)
    main = {**common, "REDIS_URL": main_url, "BUILTIN_LATENCY": "0.2"}
    slow = {**common, "REDIS_URL": slow_url, "BUILTIN_LATENCY": str(SLOW)}
    procs: list[Proc] = []
    try:
        procs.append(start_worker("worker-replicate", redis.Redis.from_url(main_url), main))
        procs.append(start_worker("worker-replicate-slow", redis.Redis.from_url(slow_url), slow))
        tls_proc, tls = _start_tls_api("api-replicate-tls", main, cert, key)
        procs.append(tls_proc)
        limited_proc, limited = start_api(
            "api-replicate-limited", {**main, "RATE_LIMIT_READS_PER_MINUTE": str(READS)})
        procs.append(limited_proc)
        slow_proc, slow_api = start_api("api-replicate-slow", slow)
        procs.append(slow_proc)
        keys = {name: _create_key(f"replicate-{name}") for name in NAMES}
        try:
            yield Stack(tls, limited, slow_api, cert, keys, receiver)
        finally:  # other tests run in modes where any active key would require one
            for secret in keys.values():
                subprocess.run([sys.executable, "-m", "mediagen", "keys", "revoke",
                                secret.secret[:11]], cwd=ROOT, capture_output=True, check=True)
    finally:
        for proc in reversed(procs):
            proc.stop()


def job_detail(stack: Stack, secret: str, job_id: str) -> dict[str, object]:
    """The prediction as mediagen's own API shows it (`/api/v1/jobs/{id}`)."""
    response = httpx.get(f"{stack.tls}/api/v1/jobs/{job_id}", verify=_context(stack.cert),
                         headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def stored_bytes(stack: Stack, secret: str, job_id: str) -> list[bytes]:
    """Every output of the job as stored, read through its signed result URLs."""
    detail = job_detail(stack, secret, job_id)
    outputs = detail.get("outputs") or [detail["result_url"]]
    data = []
    for item in outputs:  # type: ignore[union-attr]
        url = item["url"] if isinstance(item, dict) else item
        response = httpx.get(url if str(url).startswith("http") else f"{stack.tls}{url}",
                             verify=_context(stack.cert), timeout=30)
        assert response.status_code == 200, response.text
        data.append(response.content)
    return data

