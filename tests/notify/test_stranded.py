"""The sweeper's pass over webhook deliveries whose message was lost."""

from __future__ import annotations

import uuid
from datetime import timedelta

from mediagen.config import get_settings
from mediagen.jobs.models import Job
from mediagen.jobs.repository import now
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.notify.service import stranded_deliveries


async def _delivery(job: Job, **fields: object) -> str:
    delivery = await WebhookDelivery.create(id=uuid.uuid4(), job=job, event="completed",
                                            url="https://example.com/hook", payload={}, **fields)
    # Created an hour ago: long past any lease.
    await WebhookDelivery.filter(id=delivery.id).update(created_at=now() - timedelta(hours=1))
    return str(delivery.id)


async def test_lost_deliveries_are_sent_again_once(database: str) -> None:
    job = await Job.create(id=uuid.uuid4(), prompt="p", parameters={}, provider="builtin")
    lease = timedelta(seconds=get_settings().lease_seconds)
    never_sent = await _delivery(job)
    overdue_retry = await _delivery(job, next_attempt_at=now() - lease * 2)
    waiting_retry = await _delivery(job, next_attempt_at=now() + timedelta(minutes=5))
    delivered = await _delivery(job, status=DeliveryStatus.DELIVERED)
    found = set(await stranded_deliveries(get_settings()))
    assert {never_sent, overdue_retry} <= found
    assert not {waiting_retry, delivered} & found
    assert not {never_sent, overdue_retry} & set(await stranded_deliveries(get_settings()))
