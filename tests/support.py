"""Helpers for tests that run real processes: free ports, subprocesses, waiting, polling jobs."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mediagen.jobs.states import TERMINAL  # the server's own (a plain enum: safe to import early)
from mediagen.limits.rates import WINDOW

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Every process a test started, in a session of its own (so no signal to the test run reaches
# it): whatever a test left running is killed when its pytest process exits.
_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    for popen in _STARTED:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], log: Path,
              extra_env: dict[str, str] | None = None) -> Proc:
        if cmd[0] == "python":
            cmd = [sys.executable, *cmd[1:]]
        env = {**os.environ, **(extra_env or {})}
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        _STARTED.append(popen)
        return cls(name, popen, log)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def wait_for(check: Callable[[], bool], timeout: float, proc: Proc | None = None,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))


def sibling(client: httpx.AsyncClient, **kwargs: Any) -> httpx.AsyncClient:
    """Another client of the same server as `client` (with its own headers, say): the same
    application when `client` is an in-process one."""
    transport = client._transport if isinstance(client._transport, httpx.ASGITransport) else None
    kwargs.setdefault("timeout", client.timeout)
    return httpx.AsyncClient(transport=transport, base_url=client.base_url, **kwargs)


async def submit(client: httpx.AsyncClient, prompt: str, **parameters: Any) -> str:
    response = await client.post("/api/v1/generate",
                                 json={"prompt": prompt, "parameters": parameters})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def in_one_rate_window(needed: float = 10.0) -> None:
    """Wait, if need be, until the current rate-limit window (fixed minutes: WINDOW) has
    `needed` seconds left, so that requests meant to share one window do not straddle two."""
    left = WINDOW - time.time() % WINDOW
    if left < needed:
        await asyncio.sleep(left + 0.05)


async def wait_terminal(client: httpx.AsyncClient, job_id: str,
                        timeout: float = 30) -> dict[str, Any]:
    """Poll the detail endpoint until the job is terminal; return its last body."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if body["status"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {body['status']} after {timeout}s: {body}")
        await asyncio.sleep(0.05)


async def new_job(prompt: str = "p", owner: Any = None, **fields: Any) -> Any:
    """A job row as the API creates it (`repository.insert`, so the owner's unfinished-jobs
    counter agrees), then given `fields` (another unfinished state, an older `created_at`...).
    No worker is told about it, and its row says so (`dispatched_at` is empty). A job created straight into a terminal state skips the insert:
    it was never unfinished."""
    import uuid

    from mediagen.jobs import repository as repo
    from mediagen.jobs.models import Job
    from mediagen.jobs.states import JobStatus

    job_id = uuid.uuid4()
    parameters = fields.pop("parameters", {"width": 64, "height": 64})
    status = fields.get("status")
    if status is not None and JobStatus(status).is_terminal:
        return await Job.create(id=job_id, prompt=prompt, parameters=parameters,
                                provider="builtin", api_key_id=owner, **fields)
    await repo.insert(job_id, prompt=prompt, parameters=parameters, model=None,
                      provider="builtin", owner=owner, max_in_flight=0)
    await Job.filter(id=job_id).update(**{"dispatched_at": None, **fields})
    return await Job.get(id=job_id)


async def expire(job_id: str) -> None:
    """Expire a completed job as the sweeper does: its retention made due now, then
    `retention.expire_outputs` (outputs deleted from storage, the job moved to `expired`)."""
    import uuid

    from mediagen.config import get_settings
    from mediagen.db import pool
    from mediagen.jobs import retention
    from mediagen.storage import create_storage

    db = await pool()
    due = await db.execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' "
        "WHERE id = $1 AND status = 'completed'", uuid.UUID(job_id))
    assert due == "UPDATE 1", f"job {job_id} is not completed"
    storage = create_storage(get_settings())
    try:
        await retention.expire_outputs(storage, get_settings(), 1000)
    finally:
        await storage.close()
    status = await db.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job_id))
    assert status == "expired", status


async def publish(redis_url: str, *tasks: Any) -> bool:
    """Send Celery tasks (`mediagen.broker.Task`) the way the service does, through an outbox."""
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox

    outbox = Outbox(aioredis.from_url(redis_url))
    try:
        for task in tasks:
            outbox.send(task)
        return await outbox.flush()
    finally:
        await outbox.close()
        await outbox.client.aclose()


_SIGNED = re.compile(r"^(/media/[^?]+)\?expires=\d+&sig=[A-Za-z0-9_-]{43}$")


def unsigned(url: str) -> str:
    """The path of a signed /media URL (which must be signed: `?expires=...&sig=...`)."""
    match = _SIGNED.match(url)
    assert match, f"not a signed /media URL: {url}"
    return match.group(1)
