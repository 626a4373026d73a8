"""The one contract every storage backend keeps, run against LocalStorage and S3Storage (moto)."""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mediagen.errors import StorageError
from mediagen.providers.cog.outputs import staged_key, staging_prefix
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import PART_SIZE, S3Storage

from .conftest import BUCKET

MiB = 1024 * 1024


async def chunks(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def fetch(storage: Storage, key: str) -> bytes:
    """Follow `url_for` the way a client would."""
    url = await storage.url_for(key)
    if isinstance(storage, LocalStorage):
        # The API serves /media/{key} straight from the storage root.
        assert url.startswith("/media/")
        return storage.path_for(url.removeprefix("/media/")).read_bytes()
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def content_type_of(storage: Storage, key: str, raw_s3: Any) -> str | None:
    if isinstance(storage, S3Storage):
        head = await raw_s3.head_object(Bucket=BUCKET, Key=key)
        return str(head["ContentType"])
    # Local files carry no metadata: the server derives the type from the extension.
    return mimetypes.guess_type(key)[0]


async def test_bytes_round_trip(storage: Storage) -> None:
    key = storage.key_for("job-a", 0, "png")
    assert await storage.save(key, b"\x89PNG data", "image/png") == 9
    assert await storage.read(key) == b"\x89PNG data"


async def test_small_stream_round_trip(storage: Storage) -> None:
    key = storage.key_for("job-b", 0, "mp4")
    data = os.urandom(3 * MiB + 17)
    assert await storage.save(key, chunks(data), "video/mp4") == len(data)
    assert await storage.read(key) == data


async def test_large_stream_goes_multipart(storage: Storage, raw_s3: Any) -> None:
    key = storage.key_for("job-c", 0, "mp4")
    data = os.urandom(12 * MiB)  # one full 8 MiB part + a 4 MiB last part
    assert len(data) > PART_SIZE
    assert await storage.save(key, chunks(data, 3 * MiB), "video/mp4") == len(data)
    assert await storage.read(key) == data
    assert await content_type_of(storage, key, raw_s3) == "video/mp4"
    if isinstance(storage, S3Storage):
        head = await raw_s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ETag"].strip('"').endswith("-2")  # multipart ETag: md5-of-md5s "-" parts


async def test_failed_stream_leaves_no_object(storage: Storage) -> None:
    key = storage.key_for("job-d", 0, "mp4")

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(PART_SIZE + MiB)  # far enough for s3 to have started a multipart
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        await storage.save(key, broken(), "video/mp4")
    assert not await storage.exists(key)


async def test_overwrite_replaces(storage: Storage) -> None:
    key = storage.key_for("job-e", 1, "png")
    await storage.save(key, b"first version, longer", "image/png")
    await storage.save(key, b"second", "image/png")
    assert await storage.read(key) == b"second"


async def test_exists_and_delete(storage: Storage) -> None:
    key = storage.key_for("job-f", 0, "png")
    assert not await storage.exists(key)
    await storage.save(key, b"x", "image/png")
    assert await storage.exists(key)
    await storage.delete(key)
    assert not await storage.exists(key)
    await storage.delete(key)  # deleting what is gone is not an error
    with pytest.raises(StorageError):
        await storage.read(key)


def test_key_for_is_deterministic(storage: Storage) -> None:
    assert storage.key_for("job-g", 0, "png") == storage.key_for("job-g", 0, "png")
    keys = {storage.key_for("job-g", i, "png") for i in range(3)}
    keys.add(storage.key_for("job-h", 0, "png"))
    assert len(keys) == 4
    assert all(k.endswith(".png") for k in keys)


async def test_url_for_is_fetchable(storage: Storage) -> None:
    key = storage.key_for("job-i", 0, "png")
    await storage.save(key, b"fetch me", "image/png")
    assert await fetch(storage, key) == b"fetch me"


async def test_check_passes(storage: Storage) -> None:
    await storage.check()


async def test_content_type_preserved(storage: Storage, raw_s3: Any) -> None:
    key = storage.key_for("job-j", 0, "webp")
    await storage.save(key, b"RIFF....WEBP", "image/webp")
    assert await content_type_of(storage, key, raw_s3) == "image/webp"


async def test_listing_finds_what_is_under_a_folder(storage: Storage) -> None:
    """`listing` (the sweep of staged Cog outputs uses it): every key under the prefix, with
    when it was written, up to the limit; nothing outside it."""
    before = time.time() - 5
    inside = [staged_key(storage, f"mg-{'a' * 32}-{n}", f"{n:032x}.png") for n in (1, 2, 3)]
    outside = storage.key_for("job-k", 0, "png")
    for key in (*inside, outside):
        await storage.save(key, b"x", "image/png")
    prefix = staging_prefix(storage)
    listed = dict(await storage.listing(prefix, 100))
    assert set(listed) == set(inside)
    assert all(before < written < time.time() + 5 for written in listed.values())
    assert len(await storage.listing(prefix, 2)) == 2
    for key in inside:
        await storage.delete(key)
    assert await storage.listing(prefix, 100) == []
