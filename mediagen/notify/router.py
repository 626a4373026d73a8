"""`GET /api/v1/jobs/{job_id}/webhooks`: a job's webhook delivery log (owner-scoped)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mediagen.jobs import service
from mediagen.jobs.router import READ, Reader
from mediagen.notify.models import JobWebhook, WebhookDelivery

router = APIRouter(tags=["jobs"])


class WebhookDeliveryInfo(BaseModel):
    webhook_id: str = Field(description="The `webhook-id` header of every attempt.")
    event: Literal["start", "progress", "completed"]
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When a pending delivery is retried.")
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class WebhookLog(BaseModel):
    url: str | None = Field(description="The job's webhook; null if it has none.")
    events: list[Literal["start", "progress", "completed"]]
    data: list[WebhookDeliveryInfo] = Field(description="Deliveries, oldest first.")


@router.get(
    "/jobs/{job_id}/webhooks",
    response_model=WebhookLog,
    summary="A job's webhook deliveries",
    responses=READ,
)
async def job_webhooks(job_id: uuid.UUID, owner: Reader) -> WebhookLog:
    job = await service.get_job(job_id, owner)
    hook = await JobWebhook.get_or_none(job_id=job.id)
    deliveries = await WebhookDelivery.filter(job_id=job.id).order_by("created_at")
    return WebhookLog(
        url=hook.url if hook else None,
        events=hook.events if hook else [],
        data=[
            WebhookDeliveryInfo(
                webhook_id=d.message_id,
                event=d.event,
                url=d.url,
                status=d.status.value,
                attempts=d.attempts,
                last_status_code=d.last_status_code,
                last_error=d.last_error,
                next_attempt_at=d.next_attempt_at,
                created_at=d.created_at,
                delivered_at=d.delivered_at,
                payload=d.payload,
            )
            for d in deliveries
        ],
    )
