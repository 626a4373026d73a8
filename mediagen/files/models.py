"""The input file row: an object in storage owned by the key that uploaded it, until it expires;
and the bytes each key keeps in them, for its storage quota."""

from __future__ import annotations

import uuid
from typing import Any

from tortoise import fields
from tortoise.models import Model

from mediagen.keys.models import ApiKey


class InputFile(Model):
    id = fields.UUIDField(primary_key=True)
    # RESTRICT, as jobs: deleting a key deletes its files first (`mediagen keys delete`).
    api_key: fields.ForeignKeyNullableRelation[ApiKey] = fields.ForeignKeyField(
        "jobs.ApiKey", related_name="files", null=True, on_delete=fields.RESTRICT
    )
    api_key_id: uuid.UUID | None
    key = fields.CharField(max_length=512)  # the storage key
    filename = fields.CharField(max_length=255)
    content_type = fields.CharField(max_length=100)
    size = fields.BigIntField()
    # Hex digests of its bytes, taken as they were stored (none for files kept before they were).
    sha256 = fields.CharField(max_length=64, null=True)
    md5 = fields.CharField(max_length=32, null=True)
    # What the uploader asked to keep with it (Replicate's files API: `metadata`).
    metadata: dict[str, Any] | None = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "files"


class StorageCounter(Model):
    """Bytes of input files kept per API key (`ANONYMOUS` for keyless callers).

    Written with the `files` rows, in their transaction: the storage quota reads one row
    instead of summing a key's files (`mediagen.files.quota`)."""

    scope = fields.UUIDField(primary_key=True)
    bytes = fields.BigIntField(default=0)

    class Meta:
        table = "storage_counters"
