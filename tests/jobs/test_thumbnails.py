"""Gallery thumbnails on the real stack: an image output gets a small WebP once, when the
worker stores it; the detail and the list sign its URL; retention, a delete and a completion
that keeps nothing delete it with its output."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mediagen.config import get_settings
from mediagen.db import pool
from mediagen.jobs import outputs, retention, thumbnails
from mediagen.storage.local import LocalStorage
from tests.conftest import TEST_ENV
from tests.support import wait_terminal

MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])


async def _completed(client: httpx.AsyncClient, size: int, **extra: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse", "parameters": {"width": size, "height": size}, **extra}
    response = await client.post("/api/v1/generate", json=body)
    assert response.status_code == 201, response.text
    detail = await wait_terminal(client, response.json()["job_id"])
    assert detail["status"] == "completed", detail
    return detail


async def test_an_image_gets_its_thumbnail_once_and_loses_it_with_its_output(
    client: httpx.AsyncClient,
) -> None:
    detail = await _completed(client, 768, retention=60)
    job_id = detail["job_id"]
    [output] = detail["outputs"]
    url = output["thumbnail_url"]
    assert url and url.split("?")[0] == f"/media/{job_id}.thumb.webp"
    fetched = await client.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(fetched.content)) as small:
        assert small.size == (thumbnails.SIZE, thumbnails.SIZE)
    assert len(fetched.content) < output["size"] / 4
    assert (await client.get(url.split("?")[0])).status_code == 403  # signed like the output

    # Made once, by the worker: reading the job and the list again writes nothing.
    thumbnail = MEDIA / f"{job_id}.thumb.webp"
    made = thumbnail.stat().st_mtime_ns
    listed = (await client.get("/api/v1/jobs", params={"limit": 100})).json()["data"]
    summary = next(job for job in listed if job["job_id"] == job_id)
    assert summary["thumbnail_url"].split("?")[0] == url.split("?")[0]
    again = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert again["outputs"][0]["thumbnail_url"].split("?")[0] == url.split("?")[0]
    assert thumbnail.stat().st_mtime_ns == made
    assert sorted(p.name for p in MEDIA.glob(f"{job_id}*")) == [
        f"{job_id}.png",
        f"{job_id}.thumb.webp",
    ]

    # Retention deletes it with its output; its URL then answers 410 as the output's does.
    await (await pool()).execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(job_id),
    )
    assert await retention.expire_outputs(LocalStorage(MEDIA), get_settings(), 1000) >= 1
    assert not thumbnail.exists() and not (MEDIA / f"{job_id}.png").exists()
    gone = await client.get(url)
    assert gone.status_code == 410 and gone.json()["code"] == "gone"


async def test_a_deleted_job_loses_its_thumbnail(client: httpx.AsyncClient) -> None:
    detail = await _completed(client, 512)
    job_id = detail["job_id"]
    thumbnail = MEDIA / f"{job_id}.thumb.webp"
    assert thumbnail.exists()
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status_code == 204
    assert list(MEDIA.glob(f"{job_id}*")) == []


async def test_an_image_that_small_already_has_none(client: httpx.AsyncClient) -> None:
    detail = await _completed(client, 256)
    assert detail["outputs"][0]["thumbnail_url"] is None
    assert not (MEDIA / f"{detail['job_id']}.thumb.webp").exists()
    listed = (await client.get("/api/v1/jobs", params={"limit": 100})).json()["data"]
    assert next(j for j in listed if j["job_id"] == detail["job_id"])["thumbnail_url"] is None


async def test_outputs_a_completion_does_not_keep_lose_their_thumbnails(
    client: httpx.AsyncClient,
) -> None:
    """A job deleted while its outputs were stored: `discard_unused` deletes the thumbnail
    too (the job id names no row)."""
    storage = LocalStorage(MEDIA)
    job_id = str(uuid.uuid4())
    picture = io.BytesIO()
    Image.new("RGB", (600, 300), "teal").save(picture, "PNG")
    key = storage.key_for(job_id, 0, "png")
    size = await storage.save(key, picture.getvalue(), "image/png")
    made = await thumbnails.make(storage, key, "image/png", size)
    assert made == f"{job_id}.thumb.webp"
    with Image.open(MEDIA / made) as small:
        assert small.size == (256, 128)
    record = {"key": key, "content_type": "image/png", "size": size, "thumbnail_key": made}
    await outputs.discard_unused(storage, job_id, [record])
    assert list(MEDIA.glob(f"{job_id}*")) == []


async def test_without_pillow_none_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow is the `builtin` extra's: a server without it stores outputs without any."""
    storage = LocalStorage(MEDIA)
    key = storage.key_for(str(uuid.uuid4()), 0, "png")
    picture = io.BytesIO()
    Image.new("RGB", (600, 300)).save(picture, "PNG")
    monkeypatch.setattr(thumbnails, "_pillow", lambda: False)
    assert await thumbnails.make(storage, key, "image/png", 1000, picture.getvalue()) is None
    assert not (MEDIA / thumbnails.key_for(key)).exists()


def test_what_gets_no_thumbnail() -> None:
    assert thumbnails.render(b"not an image at all") is None
    tiny = io.BytesIO()
    Image.new("RGBA", (200, 100)).save(tiny, "PNG")
    assert thumbnails.render(tiny.getvalue()) is None
    assert thumbnails.key_for("p/jobs/x/1.png") == "p/jobs/x/1.thumb.webp"
