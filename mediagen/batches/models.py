"""The batch row. Its jobs point at it (`jobs.batch_id`); their states are its counts."""

from __future__ import annotations

import uuid

from tortoise import fields
from tortoise.models import Model

from mediagen.keys.models import ApiKey


class Batch(Model):
    id = fields.UUIDField(primary_key=True)
    api_key: fields.ForeignKeyNullableRelation[ApiKey] = fields.ForeignKeyField(
        "jobs.ApiKey", related_name="batches", null=True, on_delete=fields.RESTRICT
    )
    api_key_id: uuid.UUID | None
    size = fields.IntField()
    webhook = fields.CharField(max_length=2000, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    canceled_at = fields.DatetimeField(null=True)
    # When every job of the batch was found terminal (set once: the batch webhook's guard).
    completed_at = fields.DatetimeField(null=True)

    class Meta:
        table = "batches"
