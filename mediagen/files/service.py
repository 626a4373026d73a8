"""Input files: store (bytes checked for what they are, capped), read back, expire, delete.

An input file is an object in storage plus a `files` row naming its owner and expiry. Uploads,
`data:` URIs given at submit and `https://` inputs the worker fetches all end up here, so every
input a provider sees was size-checked and typed by its bytes the same way, and counted in its
owner's storage quota (`mediagen.files.quota`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.transactions import in_transaction

from mediagen.errors import NotFoundError, PayloadTooLargeError
from mediagen.files import quota as quotas
from mediagen.files.models import InputFile
from mediagen.files.sniff import HEAD_BYTES, sniff
from mediagen.files.uris import FILE_URI
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owned
from mediagen.storage.base import Body, Storage

log = logging.getLogger(__name__)
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


def uri_of(file_id: uuid.UUID | str) -> str:
    return f"{FILE_URI}{file_id}"


def storage_key(storage: Storage, file_id: uuid.UUID, ext: str) -> str:
    """Beside outputs, under `files/`: the backend's own scheme (and S3 prefix) applies."""
    return storage.key_for(f"files/{file_id}", 0, ext)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the file exceeds MAX_FILE_BYTES ({limit} bytes)")


async def _typed(body: Body, limit: int) -> tuple[str, str, Body]:
    """(content type, extension, the same body capped at `limit`), from its first bytes; 415
    before anything is stored when they are not media we accept."""
    if isinstance(body, bytes):
        if len(body) > limit:
            raise _too_large(limit)
        return *sniff(body), body
    head = b""
    stream = aiter(body)
    async for chunk in stream:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break
    content_type, ext = sniff(head)

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
    quota: int = 0,
) -> InputFile:
    """Store `body` as an input file of `owner` kept `ttl` seconds: 415 if its bytes are not
    media we accept, 413 past `limit` bytes, or (`storage_quota_exceeded`) past the owner's
    `quota` of bytes kept (0: none); nothing kept in either case."""
    file_id = file_id or uuid.uuid4()
    await quotas.check_room(owner, quota)
    content_type, ext, checked = await _typed(body, limit)
    key = storage_key(storage, file_id, ext)
    size = await storage.save(key, checked, content_type)
    try:
        async with in_transaction() as connection:  # the row and its bytes in the count
            await quotas.take(connection, owner, size, quota)
            return await InputFile.create(
                id=file_id,
                api_key_id=owner,
                key=key,
                filename=filename[:255],
                content_type=content_type,
                size=size,
                expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
                using_db=connection,
            )
    except BaseException:
        await storage.delete(key)
        raise


async def get_owned(file_id: uuid.UUID, owner: ApiKey | None) -> InputFile:
    """The file if `owner` uploaded it and it has not expired: another key's is "not found"."""
    row = await owned(InputFile, owner).get_or_none(id=file_id, expires_at__gt=datetime.now(UTC))
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
