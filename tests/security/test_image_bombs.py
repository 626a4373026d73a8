"""Decompression bombs: a 20 KB PNG that declares 13000 x 13000 pixels (a gigabyte of memory
and seconds of CPU per decode). Refused from its header wherever a file comes in (upload, data:
URI); one stored all the same (by an earlier version) fails its job within seconds, before any
decoding. An ordinary input image still works."""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image, features

from mediagen.config import get_settings
from mediagen.files import service
from mediagen.files.models import InputFile
from tests.conftest import TEST_ENV
from tests.files.images import png
from tests.stack import app
from tests.support import wait_terminal

MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
SIDE = 13_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = SIDE) -> bytes:
    """A black 1-bit PNG of `side` x `side` (about 20 KB at 13000): written row by row as a
    PNG encoder would, without holding the image (Pillow would need 169 MB to make it)."""
    rows = (b"\x00" + bytes((side + 7) // 8)) * side  # filter byte 0, then the row's bits
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b""))


BOMB = bomb_png()


def test_the_bomb_is_small_and_declares_a_huge_size() -> None:
    assert len(BOMB) < 64 * 1024 and len(base64.b64encode(BOMB)) < 60 * 1024
    with Image.open(io.BytesIO(BOMB)) as opened:  # the header only: nothing decoded
        assert opened.size == (SIDE, SIDE) and opened.mode == "1"
    assert get_settings().max_input_pixels < SIDE * SIDE


async def test_a_bomb_upload_is_refused(client: httpx.AsyncClient) -> None:
    before = set(MEDIA.glob("files/*"))
    refused = await client.post("/api/v1/files", files={"file": ("bomb.png", BOMB, "image/png")})
    assert refused.status_code == 413, refused.text
    body = refused.json()
    assert body["code"] == "image_too_large" and f"{SIDE}x{SIDE}" in body["detail"], body
    assert set(MEDIA.glob("files/*")) == before


async def test_a_bomb_data_uri_is_refused_at_submit(client: httpx.AsyncClient) -> None:
    uri = "data:image/png;base64," + base64.b64encode(BOMB).decode()
    for path, body in (
        ("/api/v1/generate", {"prompt": "bomb", "parameters": {
            "image": uri, "width": 64, "height": 64, "num_outputs": 4}}),
        ("/v1/models/black-forest-labs/flux-schnell/predictions", {"input": {
            "prompt": "bomb", "image": uri, "width": 64, "height": 64, "num_outputs": 4}}),
    ):
        began = time.monotonic()
        refused = await client.post(path, json=body)
        assert refused.status_code == 422, refused.text
        assert "'image'" in refused.text and f"{SIDE}x{SIDE}" in refused.text
        assert time.monotonic() - began < 2


async def test_a_bomb_stored_earlier_fails_its_job_within_seconds(
    client: httpx.AsyncClient,
) -> None:
    """Stored as an earlier version stored uploads (no pixel bound): the built-in generator
    reads the header, and refuses it before decoding, once for all four outputs."""
    storage, file_id = service.bound_storage(), uuid.uuid4()
    key = service.storage_key(storage, file_id, "png")
    await storage.save(key, BOMB, "image/png")
    await InputFile.create(id=file_id, api_key_id=None, key=key, filename="old.png",
                           content_type="image/png", size=len(BOMB),
                           expires_at=datetime.now(UTC) + timedelta(hours=1))
    began = time.monotonic()
    created = await client.post("/api/v1/generate", json={"prompt": "bomb", "parameters": {
        "image": service.uri_of(file_id), "width": 64, "height": 64, "num_outputs": 4}})
    assert created.status_code == 201, created.text
    job = await wait_terminal(client, created.json()["job_id"], 5)
    assert time.monotonic() - began < 5
    assert job["status"] == "failed", job
    assert "input 'image'" in job["error"] and f"{SIDE}x{SIDE}" in job["error"], job
    assert "more than" in job["error"] and job["retry_count"] == 0, job


async def test_an_ordinary_input_image_still_works(client: httpx.AsyncClient) -> None:
    for data in (png((200, 30, 30), (640, 480)), _encoded(Image.new("1", (300, 200), 1), "PNG")):
        uploaded = await client.post("/api/v1/files", files={"file": ("in.png", data)})
        assert uploaded.status_code == 201, uploaded.text
        created = await client.post("/api/v1/generate", json={"prompt": "ordinary", "parameters": {
            "image": uploaded.json()["uri"], "width": 128, "height": 128, "num_outputs": 2}})
        assert created.status_code == 201, created.text
        job = await wait_terminal(client, created.json()["job_id"], 30)
        assert job["status"] == "completed" and len(job["outputs"]) == 2, job


# --- every image type's header, against a small bound ----------------------------------------

def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg_after_metadata(size: tuple[int, int]) -> bytes:
    """A JPEG whose size comes after 30 KB of metadata (the frame header follows the EXIF)."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription
    return _encoded(Image.new("RGB", size, (90, 90, 90)), "JPEG", exif=exif.tobytes())


FORMATS = {
    "png": lambda size: _encoded(Image.new("RGB", size, (1, 2, 3)), "PNG"),
    "gif": lambda size: _encoded(Image.new("P", size), "GIF"),
    "webp-lossy": lambda size: _encoded(Image.new("RGB", size), "WEBP", lossless=False),
    "webp-lossless": lambda size: _encoded(Image.new("RGB", size), "WEBP", lossless=True),
    "webp-extended": lambda size: _encoded(Image.new("RGBA", size, (0, 0, 0, 9)), "WEBP",
                                           exif=b"Exif\x00\x00"),
    "jpeg": lambda size: _encoded(Image.new("RGB", size), "JPEG"),
    "jpeg-after-metadata": _jpeg_after_metadata,
    "avif": lambda size: _encoded(Image.new("RGB", size), "AVIF"),
}


@pytest.fixture(scope="module")
async def small(database: str) -> AsyncIterator[httpx.AsyncClient]:
    """An application with MAX_DIMENSION=64: input images of up to 4 x 64² pixels."""
    async with app({"MAX_DIMENSION": "64", "MIN_DIMENSION": "64"}) as http:
        yield http


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_each_image_type_is_measured_from_its_header(
    small: httpx.AsyncClient, fmt: str
) -> None:
    if fmt == "avif" and not features.check("avif"):
        pytest.skip("this Pillow cannot write AVIF")
    fits = await small.post("/api/v1/files", files={"file": ("a", FORMATS[fmt]((128, 128)))})
    assert fits.status_code == 201, fits.text
    over = await small.post("/api/v1/files", files={"file": ("b", FORMATS[fmt]((129, 128)))})
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "image_too_large" and "129x128" in over.json()["detail"]
