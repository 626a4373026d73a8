"""Input files on the session's stack (API + worker, built-in generator): upload, read back,
ownership, use by a job (image-to-image), refusals at submit, and the expiry hooks."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mediagen.files import service
from mediagen.files.inputs import made_id
from mediagen.files.models import InputFile
from mediagen.keys import service as keys
from mediagen.storage.local import LocalStorage
from tests.conftest import TEST_ENV
from tests.files.images import mean_color, png
from tests.support import wait_terminal

RED, BLUE = (230, 20, 20), (20, 20, 230)
MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])

# A file id nobody made (ids are uuid4s); fixed, so every test process collects the same tests.
UNKNOWN_FILE = "6d1f0b8e-4c3a-4f6e-9a2b-7e5d3c1a0f94"


async def _upload(
    client: httpx.AsyncClient,
    data: bytes,
    name: str = "in.png",
    headers: dict[str, str] | None = None,
    declared: str = "image/png",
) -> httpx.Response:
    return await client.post(
        "/api/v1/files", files={"file": (name, data, declared)}, headers=headers
    )


async def _job(client: httpx.AsyncClient, prompt: str, **params: object) -> dict:
    created = await client.post("/api/v1/generate", json={"prompt": prompt, "parameters": params})
    assert created.status_code == 201, created.text
    return await wait_terminal(client, created.json()["job_id"], 60)


@pytest.fixture
async def two_keys(database: str) -> tuple[dict[str, str], dict[str, str]]:
    _, first = await keys.create_key(f"files-{uuid.uuid4().hex[:6]}")
    _, second = await keys.create_key(f"files-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {first}"}, {"Authorization": f"Bearer {second}"}


# --- the files API -------------------------------------------------------------------------


async def test_upload_then_read_back_by_url(client: httpx.AsyncClient) -> None:
    data = png(RED)
    created = await _upload(client, data, "red square.png", declared="application/octet-stream")
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["uri"] == f"mediagen://files/{info['id']}"
    assert info["content_type"] == "image/png"  # from the bytes, not the declared type
    assert info["size"] == len(data) and info["filename"] == "red square.png"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    created_at = datetime.fromisoformat(info["created_at"])
    expires_at = datetime.fromisoformat(info["expires_at"])
    assert timedelta(hours=23) < expires_at - created_at <= timedelta(hours=24, seconds=5)
    fetched = await client.get(info["url"])
    assert fetched.status_code == 200 and fetched.content == data
    again = await client.get(f"/api/v1/files/{info['id']}")
    assert again.status_code == 200 and again.json()["size"] == len(data)


async def test_type_comes_from_the_bytes(client: httpx.AsyncClient) -> None:
    refused = await _upload(client, b"<html><body>not an image</body></html>" * 4, "x.png")
    assert refused.status_code == 415, refused.text
    assert refused.json()["code"] == "unsupported_media_type"
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
    taken = await _upload(client, wav, "sound.bin", declared="image/png")
    assert taken.status_code == 201 and taken.json()["content_type"] == "audio/wav"


async def test_not_a_form_is_refused(client: httpx.AsyncClient) -> None:
    raw = await client.post(
        "/api/v1/files", content=png(RED), headers={"content-type": "image/png"}
    )
    assert raw.status_code == 422 and raw.json()["code"] == "invalid_input"
    other_field = await client.post("/api/v1/files", files={"upload": ("a.png", png(RED))})
    assert other_field.status_code == 422 and "`file`" in other_field.json()["detail"]


async def test_another_key_gets_404(
    client: httpx.AsyncClient, two_keys: tuple[dict[str, str], dict[str, str]]
) -> None:
    mine, theirs = two_keys
    created = await _upload(client, png(RED), headers=mine)
    assert created.status_code == 201, created.text
    file_id = created.json()["id"]
    assert (await client.get(f"/api/v1/files/{file_id}", headers=theirs)).status_code == 404
    assert (await client.get(f"/api/v1/files/{file_id}")).status_code == 404  # anonymous
    assert (await client.delete(f"/api/v1/files/{file_id}", headers=theirs)).status_code == 404
    assert (await client.get(f"/api/v1/files/{file_id}", headers=mine)).status_code == 200
    # Nor may another key's job use it.
    refused = await client.post(
        "/api/v1/generate",
        headers=theirs,
        json={"prompt": "p", "parameters": {"image": f"mediagen://files/{file_id}"}},
    )
    assert refused.status_code == 422 and file_id in refused.json()["detail"]


async def test_delete_removes_object_and_row(client: httpx.AsyncClient) -> None:
    info = (await _upload(client, png(BLUE))).json()
    row = await InputFile.get(id=info["id"])
    assert (MEDIA / row.key).is_file()
    assert (await client.delete(f"/api/v1/files/{info['id']}")).status_code == 204
    assert not (MEDIA / row.key).exists()
    assert await InputFile.get_or_none(id=info["id"]) is None
    assert (await client.get(f"/api/v1/files/{info['id']}")).status_code == 404
    assert (await client.delete(f"/api/v1/files/{info['id']}")).status_code == 404


# --- jobs that use them --------------------------------------------------------------------


async def test_image_to_image_output_depends_on_the_input(client: httpx.AsyncClient) -> None:
    """Same prompt and seed, two input images: the input shows through the drawing."""
    outputs = {}
    for name, color in (("red", RED), ("blue", BLUE)):
        info = (await _upload(client, png(color))).json()
        job = await _job(
            client,
            "a quiet landscape",
            image=info["uri"],
            seed=7,
            width=256,
            height=256,
            prompt_strength=0.3,
        )
        assert job["status"] == "completed", job
        assert job["parameters"]["image"] == info["uri"]
        outputs[name] = (await client.get(job["result_url"])).content
    red, blue = (mean_color(outputs[n], (0, 0, 1, 0.5)) for n in ("red", "blue"))
    assert red[0] > red[2] + 80, red  # mostly the input's red, a third of the drawing
    assert blue[2] > blue[0] + 80, blue
    plain = await _job(client, "a quiet landscape", seed=7, width=256, height=256)
    drawn = (await client.get(plain["result_url"])).content
    assert drawn not in outputs.values()


async def test_data_uri_is_stored_as_a_file_at_submit(client: httpx.AsyncClient) -> None:
    data = png(BLUE)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    job = await _job(
        client, "from inline bytes", image=uri, width=128, height=128, prompt_strength=0.2
    )
    assert job["status"] == "completed", job
    stored = job["parameters"]["image"]
    assert stored == f"mediagen://files/{made_id(job['job_id'], 'image')}"  # deleted with the job
    info = (await client.get(f"/api/v1/files/{stored.rsplit('/', 1)[1]}")).json()
    assert info["content_type"] == "image/png" and info["size"] == len(data)
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert (await client.get(info["url"])).content == data
    output = (await client.get(job["result_url"])).content
    r, _, b = mean_color(output, (0, 0, 1, 0.5))
    assert b > r + 80


async def test_data_uri_longer_than_other_strings_passes_validation(
    client: httpx.AsyncClient,
) -> None:
    """Up to the body limit (64 KiB), not the 10,000 characters of other strings."""
    data = png(RED, (160, 120)) + b"\x00" * 20_000  # trailing bytes: still a PNG for Pillow
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert 10_000 < len(uri) < 60_000
    created = await client.post(
        "/api/v1/generate", json={"prompt": "long", "parameters": {"image": uri}}
    )
    assert created.status_code == 201, created.text
    text = "x" * 10_001
    refused = await client.post(
        "/api/v1/generate", json={"prompt": "long", "parameters": {"note": text}}
    )
    assert refused.status_code == 422


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"mediagen://files/{UNKNOWN_FILE}", "not found"),
        ("mediagen://files/not-a-uuid", "not a file id"),
        ("data:image/png;base64," + base64.b64encode(b"<svg></svg>").decode(), "unsupported"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),
    ],
)
async def test_unusable_inputs_are_refused_at_submit(
    client: httpx.AsyncClient, value: str, says: str
) -> None:
    refused = await client.post(
        "/api/v1/generate", json={"prompt": "p", "parameters": {"image": value}}
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert (
        body["code"] == "invalid_input" and says in body["detail"] and "'image'" in body["detail"]
    )


@pytest.mark.parametrize(
    "refused",
    [
        "data:image/png;base64," + base64.b64encode(b"<svg></svg>").decode(),
        f"mediagen://files/{UNKNOWN_FILE}",
    ],
)
async def test_a_refused_submit_keeps_none_of_its_inline_files(
    client: httpx.AsyncClient, refused: str
) -> None:
    """The first input was stored before the second was refused: it is deleted again."""
    inline = "data:image/png;base64," + base64.b64encode(png(RED)).decode()
    before = set(MEDIA.glob("files/*"))
    answer = await client.post(
        "/api/v1/generate",
        json={"prompt": "p", "parameters": {"kept_inline": inline, "image": refused}},
    )
    assert answer.status_code == 422, answer.text
    assert set(MEDIA.glob("files/*")) - before == set()
    assert await InputFile.filter(filename="kept_inline").count() == 0


async def test_expired_file_is_refused_and_a_used_one_outlives_the_job(
    client: httpx.AsyncClient,
) -> None:
    info = (await _upload(client, png(RED))).json()
    await InputFile.filter(id=info["id"]).update(
        expires_at=datetime.now(UTC) + timedelta(seconds=5)
    )
    job = await _job(client, "keeps it", image=info["uri"], width=64, height=64)
    assert job["status"] == "completed", job
    kept = await InputFile.get(id=info["id"])
    assert kept.expires_at > datetime.now(UTC) + timedelta(minutes=50)  # JOB_TIMEOUT, 1 h
    await InputFile.filter(id=info["id"]).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    refused = await client.post(
        "/api/v1/generate", json={"prompt": "p", "parameters": {"image": info["uri"]}}
    )
    assert refused.status_code == 422 and "expired" in refused.json()["detail"]
    assert (await client.get(f"/api/v1/files/{info['id']}")).status_code == 404


async def test_https_input_to_a_private_address_fails_the_job(
    client: httpx.AsyncClient,
) -> None:
    """The session's worker does not allow private addresses (DOWNLOAD_ALLOW_PRIVATE unset)."""
    url = "https://localhost:9/image.png"
    job = await _job(client, "guarded", image=url, width=64, height=64)
    assert job["status"] == "failed", job
    assert "input 'image'" in job["error"] and "non-public address" in job["error"], job
    assert job["retry_count"] == 0, job
    assert job["parameters"]["image"] == url
    assert await InputFile.get_or_none(id=made_id(job["job_id"], "image")) is None


# --- the expiry hooks ----------------------------------------------------------------------


async def test_delete_expired_and_delete_files(database: str) -> None:
    storage = LocalStorage(MEDIA)
    expired = await service.store(
        storage, png(RED), owner=None, filename="old.png", ttl=60, limit=1 << 20
    )
    fresh = await service.store(
        storage, png(BLUE), owner=None, filename="new.png", ttl=3600, limit=1 << 20
    )
    await InputFile.filter(id=expired.id).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert await storage.exists(expired.key) and await storage.exists(fresh.key)
    assert await service.delete_expired(storage, 1000) >= 1
    assert not await storage.exists(expired.key)
    assert await InputFile.get_or_none(id=expired.id) is None
    assert await storage.exists(fresh.key) and await InputFile.get_or_none(id=fresh.id)

    await service.delete_files([str(fresh.id), uuid.uuid4()], storage)  # unknown ids: skipped
    assert not await storage.exists(fresh.key)
    assert await InputFile.get_or_none(id=fresh.id) is None


async def test_delete_expired_respects_its_limit(database: str) -> None:
    storage = LocalStorage(MEDIA)
    await service.delete_expired(storage, 10_000)  # whatever other tests left
    rows = [
        await service.store(
            storage, png((i, i, i)), owner=None, filename=f"{i}.png", ttl=60, limit=1 << 20
        )
        for i in range(3)
    ]
    await InputFile.filter(id__in=[r.id for r in rows]).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert await service.delete_expired(storage, 2) == 2
    assert await InputFile.filter(id__in=[r.id for r in rows]).count() == 1
    assert await service.delete_expired(storage, 2) == 1
