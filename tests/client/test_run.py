"""`Client.run` / `AsyncClient.run` against the running stack: one call that submits, follows
and returns the outputs (bytes, or the paths they were saved at), uploads local files given as
parameters, and raises the client's errors for a job that did not complete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediagen.client import AsyncClient, Client, JobFailedError
from tests.conftest import REDIS, start_api
from tests.support import Proc

SMALL = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def idle_api(database: str) -> Iterator[str]:
    """An API whose queue no worker consumes: its jobs stay pending."""
    proc, url = start_api("client-run-idle", {"REDIS_URL": REDIS.fresh()})
    yield url
    proc.stop()


@pytest.fixture
async def mg(api: str, worker: Proc) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api, api_key="") as client:
        yield client


def _job_ids(seen: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {str(data["job_id"]) for event, data in seen if event == "status"}


async def _detail(api: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        response = await http.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _media(api: str, url: str) -> bytes:
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def test_run_returns_the_outputs_bytes_in_order(mg: AsyncClient, api: str) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    outputs = await mg.run(
        f"a one-call red fox {uuid.uuid4()}",
        num_outputs=2,
        seed=11,
        progress=lambda event, data: seen.append((event, data)),
        timeout=30,
        **SMALL,
    )
    [job_id] = _job_ids(seen)
    detail = await _detail(api, job_id)
    assert detail["status"] == "completed"
    assert detail["parameters"]["seed"] == 11 and detail["parameters"]["num_outputs"] == 2
    assert len(outputs) == 2 and all(isinstance(data, bytes) for data in outputs)
    assert outputs == [await _media(api, output["url"]) for output in detail["outputs"]]
    assert outputs[0].startswith(b"\x89PNG") and outputs[0] != outputs[1]


def test_sync_run_saves_to_a_directory_and_uploads_input_files(
    api: str, worker: Proc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`save_to`: the paths, as `download` names them; a Path or an open file as a parameter
    is uploaded and named by its URI; `logs=True` writes the log lines to stderr."""
    from PIL import Image

    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(picture)
    seen: list[tuple[str, dict[str, Any]]] = []
    with Client(api, api_key="") as client:
        paths = client.run(
            "a saved fox from a picture",
            save_to=tmp_path / "out",
            output_format="webp",
            image=picture,
            logs=True,
            progress=lambda event, data: seen.append((event, data)),
            timeout=30,
            **SMALL,
        )
        [job_id] = _job_ids(seen)
        with picture.open("rb") as handle:
            again = client.run("the same picture, opened", image=handle, timeout=30, **SMALL)
    assert [path.name for path in paths] == [f"{job_id}-0.webp"]
    assert paths[0].parent == tmp_path / "out"
    detail = asyncio.run(_detail(api, job_id))
    assert paths[0].read_bytes() == asyncio.run(_media(api, detail["result_url"]))
    assert len(again) == 1 and again[0].startswith(b"\x89PNG")
    uri = str(detail["parameters"]["image"])
    assert uri.startswith("mediagen://files/")
    info = httpx.get(f"{api}/api/v1/files/{uri.rsplit('/', 1)[1]}", timeout=10).json()
    assert info["filename"] == "red.png"
    assert httpx.get(api + info["url"], timeout=10).content == picture.read_bytes()
    assert "rendering 1 webp 64x64, seed random, 50 steps\n" in capsys.readouterr().err


async def test_run_raises_for_a_failed_job(mg: AsyncClient) -> None:
    with pytest.raises(JobFailedError) as caught:
        await mg.run("[fault:permanent] a one-call doomed kite", timeout=30, **SMALL)
    assert caught.value.code == "job_failed"
    assert caught.value.job.status == "failed"
    assert caught.value.job.error and "injected permanent fault" in caught.value.job.error


async def test_run_raises_for_a_canceled_job_and_names_a_job_past_its_timeout(
    idle_api: str,
) -> None:
    async with AsyncClient(idle_api) as mg:
        with pytest.raises(TimeoutError) as late:
            await mg.run("a heron nobody renders", timeout=0.5, **SMALL)
        [job_id] = [word for word in str(late.value).split() if len(word) == 36]
        assert (await mg.get(job_id)).status == "pending"  # it goes on
        await mg.cancel(job_id)

        seen: list[tuple[str, dict[str, Any]]] = []
        running = asyncio.ensure_future(
            mg.run("a heron canceled while run waits", progress=lambda e, d: seen.append((e, d)))
        )
        for _ in range(100):
            if _job_ids(seen):
                break
            await asyncio.sleep(0.05)
        [job_id] = _job_ids(seen)
        await mg.cancel(job_id)
        with pytest.raises(JobFailedError) as caught:
            await asyncio.wait_for(running, 15)
    assert caught.value.code == "job_canceled" and caught.value.job.id == job_id

