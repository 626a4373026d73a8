"""The models file edited under a running stack (`mediagen.catalog.watch`), against real Cog
servers (tests/cog_servers.py): the API and a worker process with MODELS_FILE_CHECK_SECONDS
of 0.2 s, a redis-server of their own.

- An edit that swaps a model's server for another (the new one given by DNS, `localhost`):
  new jobs run on the new one only, the jobs already running on the old one finish, and one
  of them is canceled there (a job records where it runs).
- SIGHUP reads the file again in both processes (an edit that leaves the file's stamp as it
  was, which the file check cannot see), and uvicorn still stops on SIGTERM.
- Two real servers on two addresses of one name (`127.0.0.1` and `::1`, the same port; the
  name's answers given to the watcher): each address is a server of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from mediagen.catalog import load_catalog
from mediagen.catalog.watch import CatalogWatcher
from mediagen.config import Settings
from mediagen.providers.cog import ids
from tests.cog_servers import CogServer, cog_venv  # noqa: F401 - the fixture, for this module
from tests.conftest import redis_server, start_api, start_worker
from tests.support import Proc, free_port, wait_for, wait_terminal

MODEL = "examples/fox"
SECRET = "test-cog-reload-secret"


@dataclass
class Stack:
    url: str
    port: int
    env: dict[str, str]
    models: Path
    api: Proc
    worker: Proc
    old: list[CogServer]  # in the file at start
    new: CogServer  # given by DNS later


def _file(old: list[CogServer] = (), new: CogServer | None = None) -> str:  # type: ignore[assignment]
    """The models file: `old` as plain endpoints, `new` behind a DNS name (`localhost`
    resolves to 127.0.0.1 here); one slot each (the example model runs one at a time)."""
    text = f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 60\n'
    for server in old:
        text += f'[[models."{MODEL}".endpoints]]\nurl = "{server.url}"\nslots = 1\n'
    if new is not None:
        text += (f'[[models."{MODEL}".endpoints]]\nurl = "http://localhost:{new.port}"\n'
                 'slots = 1\ndiscover = "dns"\n')
    return text


@pytest.fixture(scope="module")
def stack(database: str, cog_venv: Path,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cog-reload")
    old = [CogServer(cog_venv, tmp / f"cog-old-{n}.log").launch() for n in range(2)]
    new = CogServer(cog_venv, tmp / "cog-new.log").launch()
    try:
        for server in (*old, new):
            server.ready()
        port = free_port()
        redis_port, redis_proc = redis_server()
    except BaseException:
        for server in (*old, new):
            server.stop()
        raise
    broker = redis.Redis(port=redis_port)
    models = tmp / "models.toml"
    models.write_text(_file(old))
    env = {"MODELS_FILE": str(models), "MODELS_FILE_CHECK_SECONDS": "0.2",
           "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "COG_WEBHOOK_SECRET": SECRET}
    procs: list[Proc] = []
    try:
        procs.append(start_worker("worker-cog-reload", broker, env))
        api, url = start_api("api-cog-reload", env, port)
        procs.append(api)
        yield Stack(url, port, env, models, api, procs[0], old, new)
    finally:
        for proc in procs:
            proc.stop()
        for server in (*old, new):
            server.stop()
        broker.close()
        redis_proc.terminate()
        redis_proc.wait(10)


def _inputs(**parameters: Any) -> dict[str, Any]:
    return {"width": 64, "height": 64, "num_inference_steps": 3, "output_format": "png",
            **parameters}


async def _submit(client: httpx.AsyncClient, prompt: str, **parameters: Any) -> str:
    created = await client.post("/api/v1/generate", json={
        "prompt": prompt, "model": MODEL, "parameters": _inputs(**parameters)})
    assert created.status_code == 201, created.text
    return str(created.json()["job_id"])


async def _running_on(client: httpx.AsyncClient, job_id: str, servers: list[CogServer]
                      ) -> tuple[dict[str, Any], CogServer]:
    """The job once its prediction runs on one of `servers`, and that server."""
    job: dict[str, Any] = {}
    for _ in range(600):
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        for server in servers:
            if job["prediction_id"] and server.says(_cog_id(job)):
                return job, server
        await asyncio.sleep(0.025)
    raise AssertionError(f"the prediction never started: {job}")


def _cog_id(job: dict[str, Any]) -> str:
    return str(job["prediction_id"]).split(".")[0]


def _reloads(proc: Proc) -> list[str]:
    """The lines of the process's log that say the models file was reloaded."""
    try:
        return [line for line in proc.log.read_text(errors="replace").splitlines()
                if "reloaded:" in line and "models file" in line]
    except OSError:
        return []


def _wait_reload(stack: Stack, seen: tuple[int, int], says: str, timeout: float = 10) -> None:
    """Until both processes logged one more reload than `seen`, saying `says`."""
    for proc, before in zip((stack.api, stack.worker), seen, strict=True):
        wait_for(lambda proc=proc, before=before: len(_reloads(proc)) > before, timeout, proc,
                 f"{proc.name} reloading the models file")
        line = _reloads(proc)[before]
        assert says in line, line


def _seen(stack: Stack) -> tuple[int, int]:
    return len(_reloads(stack.api)), len(_reloads(stack.worker))


async def test_an_edit_moves_new_jobs_and_lets_running_ones_finish(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        # A prediction on each old server: 5 s, and 30 s (canceled).
        kept = await _submit(client, "a fox that keeps running", step_seconds=0.2,
                             num_inference_steps=25)
        dropped = await _submit(client, "a fox to cancel", step_seconds=0.2,
                                num_inference_steps=150)
        first, first_on = await _running_on(client, kept, stack.old)
        second, second_on = await _running_on(client, dropped, stack.old)
        assert first_on is not second_on

        seen = _seen(stack)
        stack.models.write_text(_file(new=stack.new))  # the old servers out, the new one in
        gone = ", ".join(sorted(f"{MODEL} {server.url}" for server in stack.old))
        _wait_reload(stack, seen, f"endpoints added: {MODEL} {stack.new.url}; "
                                  f"endpoints removed: {gone}")
        running = [(await client.get(f"/api/v1/jobs/{job_id}")).json()
                   for job_id in (kept, dropped)]
        assert [job["status"] for job in running] == ["processing"] * 2, running

        # A cancel still reaches the server the file no longer names.
        canceled = await client.post(f"/api/v1/jobs/{dropped}/cancel")
        assert canceled.status_code == 200, canceled.text
        given = ids.given_id(SECRET.encode(), _cog_id(second))
        wait_for(lambda: second_on.says(f'"Prediction cancelled","prediction_id":"{given}"'),
                 10, None, "the cancel on the old server")

        # New work goes to the new server only.
        fresh = [await _submit(client, f"a fox after the edit {n}") for n in range(3)]
        done = [await wait_terminal(client, job_id, 30) for job_id in fresh]
        assert [job["status"] for job in done] == ["completed"] * 3, done
        for job in done:
            assert stack.new.says(_cog_id(job))
            assert not any(server.says(_cog_id(job)) for server in stack.old)

        # The job running on an old server finishes there, as if nothing happened.
        finished = await wait_terminal(client, kept, 30)
        assert finished["status"] == "completed", finished
        assert finished["attempts"] == 1 and _cog_id(finished) == _cog_id(first)
        assert len(finished["outputs"]) == 1
        assert (await client.get(f"/api/v1/jobs/{dropped}")).json()["status"] == "canceled"


async def test_sighup_reloads_both_processes_and_uvicorn_still_stops_on_sigterm(
        stack: Stack) -> None:
    # An edit the file check cannot see: same inode, same size, same mtime.
    stat = stack.models.stat()
    text = stack.models.read_text()
    edited = text.replace("deadline = 60", "deadline = 61")
    assert edited != text and len(edited) == len(text)
    with stack.models.open("r+") as file:
        file.write(edited)
    os.utime(stack.models, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    seen = _seen(stack)
    time.sleep(1)  # five checks of the file: nothing seen
    assert _seen(stack) == seen

    os.kill(stack.api.popen.pid, signal.SIGHUP)
    os.kill(stack.worker.popen.pid, signal.SIGHUP)
    _wait_reload(stack, seen, f"reloaded: models changed: {MODEL}")
    assert stack.api.popen.poll() is None and stack.worker.popen.poll() is None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        job = await wait_terminal(client, await _submit(client, "a fox after the signal"), 30)
    assert job["status"] == "completed", job

    # uvicorn's own signals still work: SIGTERM shuts the app down (then uvicorn raises the
    # signal again, as it does).
    before = len(stack.api.log.read_text().splitlines())
    assert stack.api.stop(signal.SIGTERM, timeout=10) == -signal.SIGTERM
    after = stack.api.log.read_text().splitlines()[before:]
    assert any("Application shutdown complete" in line for line in after), after
    stack.api, _ = start_api("api-cog-reload", stack.env, stack.port)


async def test_each_address_of_a_name_is_a_server_of_its_own(
        cog_venv: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    servers = [CogServer(cog_venv, tmp_path / f"cog-{n}.log", port=port, host=host).launch()
               for n, host in enumerate(("127.0.0.1", "::1"))]
    try:
        for server in servers:
            server.ready()
        path = tmp_path / "models.toml"
        path.write_text(f'[models."{MODEL}"]\nprovider = "cog"\n[[models."{MODEL}".endpoints]]\n'
                        f'url = "http://fox.cog.test:{port}"\ndiscover = "dns"\n')
        settings = Settings(_env_file=None, models_file=path,  # type: ignore[call-arg]
                            models_file_check_seconds=0)
        catalog = load_catalog(settings)

        async def two_addresses(host: str, asked: int) -> list[str]:
            assert (host, asked) == ("fox.cog.test", port)
            return ["127.0.0.1", "::1"]

        watcher = CatalogWatcher(catalog, settings, two_addresses)
        await watcher.start()
        await watcher.stop()
        endpoints = catalog.route(MODEL).endpoints
        assert [e.url for e in endpoints] == [servers[0].url, servers[1].url]
        async with httpx.AsyncClient(timeout=30) as client:
            for endpoint, server in zip(endpoints, servers, strict=True):
                prediction = f"p-{uuid.uuid4().hex}"
                reply = await client.put(f"{endpoint.url}/predictions/{prediction}",
                                         json={"input": {"prompt": "a fox", **_inputs()}})
                assert reply.status_code == 200 and reply.json()["status"] == "succeeded"
                assert server.says(prediction)
                assert not [s for s in servers if s is not server and s.says(prediction)]
    finally:
        for server in servers:
            server.stop()
