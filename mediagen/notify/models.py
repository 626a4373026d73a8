"""A job's webhook (created with the job) and the log of its deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from mediagen.batches.models import Batch
from mediagen.jobs.models import Job


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class JobWebhook(Model):
    id = fields.UUIDField(primary_key=True, default=uuid.uuid4)
    job: fields.OneToOneRelation[Job] = fields.OneToOneField(
        "jobs.Job", related_name="webhook", on_delete=fields.CASCADE
    )
    job_id: uuid.UUID
    url = fields.CharField(max_length=2000)
    events: list[str] = fields.JSONField(default=list)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "job_webhooks"


class WebhookDelivery(Model):
    """One event for one job; its id is the `webhook-id` of every attempt (`msg_` + hex).

    A batch's `batch.completed` is one too: it names its batch instead of a job."""

    id = fields.UUIDField(primary_key=True)
    job: fields.ForeignKeyNullableRelation[Job] = fields.ForeignKeyField(
        "jobs.Job", related_name="webhook_deliveries", null=True, on_delete=fields.CASCADE
    )
    job_id: uuid.UUID | None
    batch: fields.ForeignKeyNullableRelation[Batch] = fields.ForeignKeyField(
        "jobs.Batch", related_name="webhook_deliveries", null=True, on_delete=fields.CASCADE
    )
    batch_id: uuid.UUID | None
    event = fields.CharField(max_length=16)
    url = fields.CharField(max_length=2000)
    payload: dict[str, Any] = fields.JSONField()
    status = fields.CharEnumField(DeliveryStatus, max_length=16, default=DeliveryStatus.PENDING)
    attempts = fields.IntField(default=0)
    last_status_code = fields.IntField(null=True)
    last_error = fields.TextField(null=True)
    next_attempt_at: datetime | None = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    delivered_at: datetime | None = fields.DatetimeField(null=True)

    class Meta:
        table = "webhook_deliveries"
        indexes = (
            Index(fields=("job_id", "created_at"), name="webhook_deliveries_job_idx"),
            Index(fields=("batch_id",), name="webhook_deliveries_batch_idx"),
            # The sweeper's look for pending deliveries whose message was lost.
            Index(fields=("status", "next_attempt_at"), name="webhook_deliveries_due_idx"),
        )

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.hex}"
