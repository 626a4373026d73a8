"""Input files: store (bytes checked for what they are, capped), read back, expire, delete.

An input file is an object in storage plus a `files` row naming its owner and expiry. Uploads,
`data:` URIs given at submit and `https://` inputs the worker fetches all end up here, so every
input a provider sees was size-checked and typed by its bytes the same way, and counted in its
owner's storage quota (`mediagen.files.quota`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from mediagen.config import Settings, get_settings
from mediagen.errors import NotFoundError, PayloadTooLargeError
from mediagen.files import quota as quotas
from mediagen.files.models import InputFile
from mediagen.files.sniff import HEAD_BYTES, SIZE_BYTES, check_pixels, dimensions, sniff
from mediagen.files.uris import FILE_URI
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owned, owner_id
from mediagen.storage.base import Body, Storage

log = logging.getLogger(__name__)
# What an uploader asked to keep with a file, read once its bytes are stored (`store`).
Metadata = Callable[[], dict[str, Any] | None]
_storage: Storage | None = None


def bind_storage(storage: Storage) -> None:
    """The API process's store, for inputs given inline at submit (`data:` URIs), which reach
    `create_job` from several entry points that do not carry it."""
    global _storage
    _storage = storage


def bound_storage() -> Storage:
    if _storage is None:
        raise RuntimeError("no storage bound for input files (mediagen.main binds it)")
    return _storage


# Characters a stored file name never keeps: controls (a NUL cannot even be stored) and the
# bidirectional overrides that make `gnp.exe` read as `exe.png`.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def clean_filename(name: str) -> str:
    """A file name as it is stored and shown: without control characters, at most 255
    characters; `upload` when nothing is left."""
    return _UNPRINTABLE.sub("", name)[:255] or "upload"


def uri_of(file_id: uuid.UUID | str) -> str:
    return f"{FILE_URI}{file_id}"


def storage_key(storage: Storage, file_id: uuid.UUID, ext: str) -> str:
    """Beside outputs, under `files/`: the backend's own scheme (and S3 prefix) applies."""
    return storage.key_for(f"files/{file_id}", 0, ext)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the file exceeds MAX_FILE_BYTES ({limit} bytes)")


async def _typed(body: Body, limit: int, max_pixels: int) -> tuple[str, str, Body]:
    """(content type, extension, the same body capped at `limit`), from its first bytes; 415
    before anything is stored when they are not media we accept, 413 when they are an image
    whose header declares more than `max_pixels`."""
    if isinstance(body, bytes):
        if len(body) > limit:
            raise _too_large(limit)
        content_type, ext = sniff(body)
        check_pixels(body, ext, max_pixels)
        return content_type, ext, body
    head = b""
    stream = aiter(body)
    async for chunk in stream:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break
    content_type, ext = sniff(head)
    if content_type.startswith("image/"):  # its size may come later (JPEG: after metadata)
        while len(head) < SIZE_BYTES and dimensions(head, ext) is None:
            chunk = await anext(stream, b"")
            if not chunk:
                break
            head += chunk
    check_pixels(head, ext, max_pixels)

    async def capped() -> AsyncIterator[bytes]:
        size = len(head)
        if size > limit:
            raise _too_large(limit)
        yield head
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            yield chunk

    return content_type, ext, capped()


async def store(
    storage: Storage,
    body: Body,
    *,
    owner: uuid.UUID | None,
    filename: str,
    ttl: float,
    limit: int,
    file_id: uuid.UUID | None = None,
    max_pixels: int | None = None,
    quota: int = 0,
    metadata: Metadata | None = None,
) -> InputFile:
    """Store `body` as an input file of `owner` kept `ttl` seconds, with its checksums and
    what `metadata()` gives once the body is stored (a form's fields after the file are read by
    then): 415 if its bytes are not media we accept, 413 past `limit` bytes, for an image over
    `max_pixels` (by default `Settings.max_input_pixels`) or (`storage_quota_exceeded`) past
    the owner's `quota` of bytes kept (0: none), or what `metadata()` raises; nothing kept in
    any case."""
    file_id = file_id or uuid.uuid4()
    await quotas.check_room(owner, quota)
    pixels = max_pixels or get_settings().max_input_pixels
    content_type, ext, checked = await _typed(body, limit, pixels)
    key = storage_key(storage, file_id, ext)
    digests = Digests()
    size = await storage.save(key, digests.of(checked), content_type)
    try:
        kept = metadata() if metadata is not None else None
        async with in_transaction() as connection:  # the row and its bytes in the count
            await quotas.take(connection, owner, size, quota)
            return await InputFile.create(
                id=file_id,
                api_key_id=owner,
                key=key,
                filename=clean_filename(filename),
                content_type=content_type,
                size=size,
                sha256=digests.sha256.hexdigest(),
                md5=digests.md5.hexdigest(),
                metadata=kept,
                expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
                using_db=connection,
            )
    except BaseException:
        await storage.delete(key)
        raise


class Digests:
    """SHA-256 and MD5 of a body, taken as it streams to storage (one pass over its bytes)."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)  # Replicate's files API gives both

    def of(self, body: Body) -> Body:
        """`body`, each of its chunks also added to the digests."""
        if isinstance(body, bytes):
            self.sha256.update(body)
            self.md5.update(body)
            return body
        return self._streamed(body)

    async def _streamed(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self.sha256.update(chunk)
            self.md5.update(chunk)
            yield chunk


async def upload(
    storage: Storage,
    settings: Settings,
    body: Body,
    owner: ApiKey | None,
    filename: str,
    metadata: Metadata | None = None,
) -> InputFile:
    """Store a file a caller uploads (`/api/v1/files`, `/v1/files`), kept FILE_TTL, within
    MAX_FILE_BYTES, MAX_INPUT_PIXELS and the key's STORAGE_QUOTA_BYTES (`store`)."""
    return await store(
        storage,
        body,
        owner=owner_id(owner),
        filename=filename,
        ttl=settings.file_ttl,
        limit=settings.max_file_bytes,
        max_pixels=settings.max_input_pixels,
        quota=settings.storage_quota_bytes,
        metadata=metadata,
    )


def unexpired(owner: ApiKey | None) -> QuerySet[InputFile]:
    """`owner`'s files that have not expired: the ones it can see and use."""
    return owned(InputFile, owner).filter(expires_at__gt=datetime.now(UTC))


async def get_owned(file_id: uuid.UUID, owner: ApiKey | None) -> InputFile:
    """The file if `owner` uploaded it and it has not expired: another key's is "not found"."""
    row = await unexpired(owner).get_or_none(id=file_id)
    if row is None:
        raise NotFoundError(f"file {file_id} not found")
    return row


async def describe(row: InputFile, storage: Storage) -> dict[str, Any]:
    """The answer of `POST`/`GET /api/v1/files` (`FileInfo`)."""
    return {
        "id": str(row.id),  # (asyncpg's own UUID type when read back, which orjson refuses)
        "uri": uri_of(row.id),
        "url": await storage.url_for(row.key),
        "filename": row.filename,
        "content_type": row.content_type,
        "size": row.size,
        "sha256": row.sha256,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
    }


async def remove(file_id: uuid.UUID, owner: ApiKey | None, storage: Storage) -> None:
    """Delete a file of `owner` (404 if none): its object, then its row."""
    row = await get_owned(file_id, owner)
    await delete_files([row.id], storage)


async def delete_expired(storage: Storage, limit: int) -> int:
    """Delete up to `limit` expired files, object then row (a crash in between leaves the row,
    retried next time, never an object nobody knows of); how many went.

    Safe against a job naming a file meanwhile: a submit only accepts (and extends) a file
    that has not expired, and the row is deleted only if it still has."""
    now = datetime.now(UTC)
    rows = await InputFile.filter(expires_at__lte=now).order_by("expires_at").limit(limit)
    deleted = 0
    for row in rows:
        await storage.delete(row.key)
        deleted += await quotas.delete_rows([row.id], expired_before=now)
    if deleted:
        log.info("deleted %d expired input files", deleted)
    return deleted


async def delete_files(file_ids: Sequence[str | uuid.UUID], storage: Storage) -> None:
    """Delete these files, object then row, expired or not (a job's or a key's data being
    deleted); ids with no row are skipped."""
    ids = [value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)) for value in file_ids]
    if not ids:
        return
    for row in await InputFile.filter(id__in=ids):
        await storage.delete(row.key)
        await quotas.delete_rows([row.id])
