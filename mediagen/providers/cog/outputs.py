"""Cog outputs on their way to storage: what a prediction's output may be, `data:` URIs checked
before a byte is decoded and decoded a megabyte at a time, and the *staged* objects they (and
`--upload-url` uploads) become until the worker stores them at the job's own keys.

Apart from the provider (`mediagen.providers.cog`) because the API's webhook and upload routes
(`mediagen.providers.cog.webhooks`) use it too, and neither side needs the other's code for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from mediagen.errors import PermanentProviderError, StorageError
from mediagen.jobs.values import split
from mediagen.providers.downloads import CANONICAL, MEDIA_TYPES
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage

CHUNK = 1024 * 1024
# What outputs look like in a record: a staged object of the prediction, or a URL.
STAGED = "staged:"
# The Location the upload route answers (Cog puts it in the prediction's output as it is).
UPLOADED = "mediagen-upload:"
STAGED_NAME = re.compile(r"^[0-9a-f]{32}\.([a-z0-9]{2,5})$")


STAGING = "cog-staging/"
_MARK = "0f8e4b3a9c2d4e6f8a1b3c5d7e9f0a2b"  # a name no key part is, to find where it lands


def staged_key(storage: Storage, prediction: str, name: str) -> str:
    """Where a staged output of `prediction` lives in `storage` (under the backend's own
    prefix; never a job's output key)."""
    stem, _, ext = name.partition(".")
    return storage.key_for(f"{STAGING}{prediction}/{stem}", 0, ext)


def staging_prefix(storage: Storage) -> str:
    """The prefix of every staged key in `storage` (a folder: what follows is
    `<prediction>/...`)."""
    key = storage.key_for(f"{STAGING}{_MARK}", 0, "x")
    return key[: key.index(_MARK)]


def media_of(content_type: str | None, name: str = "") -> tuple[str, str]:
    """(content type, extension) an output may be stored as, from its declared type or, for
    octet-stream, its name's extension; PermanentProviderError for anything else."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in MEDIA_TYPES:
        ext = MEDIA_TYPES[media]
        return CANONICAL[ext], ext
    if media in ("", "application/octet-stream", "binary/octet-stream"):
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        suffix = {"jpeg": "jpg"}.get(suffix, suffix)
        if suffix in CANONICAL:
            return CANONICAL[suffix], suffix
    raise PermanentProviderError(f"output has unsupported content type {media or 'none'!r}")


@dataclass(frozen=True)
class DataUri:
    """A base64 `data:` URI, checked before a byte is decoded."""

    content_type: str
    ext: str
    payload: str
    size: int  # decoded

    @classmethod
    def parse(cls, uri: str, max_bytes: int) -> DataUri:
        head, comma, payload = uri.partition(",")
        if not comma or not head.startswith("data:"):
            raise PermanentProviderError("output is not a data: URI")
        media, *params = head[5:].split(";")
        if "base64" not in (p.strip().lower() for p in params):
            raise PermanentProviderError("data: URI output is not base64")
        content_type, ext = media_of(media)
        padding = len(payload) - len(payload.rstrip("="))
        size = len(payload) * 3 // 4 - padding
        if len(payload) % 4:
            raise PermanentProviderError("data: URI output is not valid base64")
        if size > max_bytes:
            raise PermanentProviderError(f"output exceeds {max_bytes} bytes ({size} declared)")
        return cls(content_type, ext, payload, size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded bytes, a megabyte at a time (decoding never holds the loop long)."""
        step = CHUNK // 3 * 4
        for start in range(0, len(self.payload), step):
            try:
                yield base64.b64decode(self.payload[start : start + step], validate=True)
            except binascii.Error as exc:
                raise PermanentProviderError("data: URI output is not valid base64") from exc
            await asyncio.sleep(0)


def is_file(value: str) -> bool:
    """Whether a string in a prediction's output is a file: a data: URI, one of our upload
    Locations or an http(s) URL (what Cog makes of a `Path` output). Any other string is
    text, which the job keeps in its output value (`mediagen.jobs.values`)."""
    return value.startswith(("data:", UPLOADED, "https://", "http://"))


def file_outputs(value: Any) -> list[str]:
    """The file outputs of a prediction, in order, in the shapes Cog returns (one, a list, a
    dict of them, nested). Anything else (text, numbers) is not a file and is left out."""
    return [ref for _, ref in split(value, is_file)[1]]


# --- the provider ---------------------------------------------------------------------------


async def staged_chunks(storage: Storage, key: str) -> AsyncIterator[bytes]:
    """A staged object's bytes: read from the file a megabyte at a time for local storage;
    other backends hand it over whole (at most DOWNLOAD_MAX_BYTES)."""
    if not isinstance(storage, LocalStorage):
        yield await storage.read(key)
        return
    try:
        handle = await asyncio.to_thread(storage.path_for(key).open, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {key}: {exc}") from exc
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
