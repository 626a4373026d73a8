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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TMP
from tests.files.tls import make_certificate
from tests.receiver import Receiver, receiving
from tests.stack import Redis, Stacks, create_key, revoke_key
from tests.support import Proc, free_port, wait_for

READS = 3  # reads per minute per key on the `limited` API
SLOW = 5.0  # seconds a job of the `slow` stack takes
NAMES = ("alice", "bob", "lister", "carol", "jsuser", "jslister", "jsreader", "filer", "filethief",
         "filelister", "jsfiler", "filemeta")


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


async def _create_key(name: str) -> Key:
    """A key (as `mediagen keys create NAME` makes it): its secret and its webhook secret."""
    key, secret = await create_key(name)
    return Key(secret, key.webhook_secret)


def _launch_tls_api(name: str, env: dict[str, str], cert: Path, key: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc.start(
        name,
        ["python", "-m", "uvicorn", "mediagen.main:app", "--host", "127.0.0.1", "--port",
         str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        TMP / f"{name}.log",
        {"API_PORT": str(port), **env},
    )
    return proc, f"https://127.0.0.1:{port}"


def _wait_tls_api(proc: Proc, url: str, cert: Path) -> None:
    context = _context(cert)

    def up() -> bool:
        try:
            return httpx.get(f"{url}/openapi.json", timeout=1, verify=context).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, proc, f"{proc.name} listening")


@pytest.fixture(scope="package")
def receiver() -> Iterator[Receiver]:
    """Records every POST (the tests use /hook/{name}) and answers 204."""
    with receiving() as rec:
        yield rec


@pytest.fixture(scope="package")
async def stack(stacks: Stacks, redis_dbs: Redis, receiver: Receiver) -> AsyncIterator[Stack]:
    cert_dir = TMP / "replicate-tls"
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(cert_dir)
    common = {"AUTH_REQUIRED": "true", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
              "WEBHOOK_RETRY_DELAY": "0.5"}
    main = {**common, "REDIS_URL": redis_dbs.fresh(), "BUILTIN_LATENCY": "0.2"}
    slow = {**common, "REDIS_URL": redis_dbs.fresh(), "BUILTIN_LATENCY": str(SLOW)}
    # The HTTPS API starts first (on its own), then the rest all at once while it comes up.
    tls_proc, tls = _launch_tls_api("api-replicate-tls", main, cert, key)
    try:
        _, limited, slow_stack = stacks.many(
            (main, False, True, "replicate"),
            ({**main, "RATE_LIMIT_READS_PER_MINUTE": str(READS)}, True, False,
             "replicate-limited"),
            (slow, True, True, "replicate-slow"))
        _wait_tls_api(tls_proc, tls, cert)
        keys = {name: await _create_key(f"replicate-{name}") for name in NAMES}
        try:
            yield Stack(tls, limited.url, slow_stack.url, cert, keys, receiver)
        finally:  # other tests run in modes where any active key would require one
            for secret in keys.values():
                await revoke_key(secret.secret[:11])
    finally:
        tls_proc.stop()


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

