"""The API key row. Only a SHA-256 of the key is stored; the prefix identifies it in listings."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class ApiKey(Model):
    id = fields.UUIDField(primary_key=True)
    name = fields.CharField(max_length=100)
    prefix = fields.CharField(max_length=16, db_index=True)
    key_hash = fields.CharField(max_length=64, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)
    # Signs this key's client webhooks (`whsec_` + base64); NULL for keys made before them.
    webhook_secret = fields.CharField(max_length=100, null=True)
    # The highest job priority this key may ask for (`low`/`normal`/`high`); NULL: the
    # DEFAULT_MAX_PRIORITY setting.
    max_priority = fields.CharField(max_length=8, null=True)
    # How long this key's jobs may wait to start when they do not say (`max_queue_seconds`);
    # NULL: the model's default, else MAX_QUEUE_SECONDS.
    max_queue_seconds = fields.IntField(null=True)
    # Its share of the starts when several keys have jobs waiting: `weight` turns to another
    # key's one of weight 1 (mediagen.scheduling).
    weight = fields.IntField(default=1, db_default=1)

    class Meta:
        table = "api_keys"

    def __str__(self) -> str:
        return f"ApiKey({self.prefix}..., {self.name})"
