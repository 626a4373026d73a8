"""Client webhooks on the job's side: checked at submit, recorded with the job, and turned into
deliveries by the job's events (`mediagen.jobs.events` calls `job_moved` / `progress_changed`).

Events: `start` (the first move to processing), `progress` (the reported progress changed) and
`completed` (any terminal state: completed, failed or canceled; the payload's `status` says
which). Nothing here ever fails a transition: errors are logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
from tortoise.expressions import Q

from mediagen.config import Settings
from mediagen.errors import MediagenError
from mediagen.jobs.models import Job
from mediagen.jobs.repository import now
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.netguard import ResolveError, UnsafeURLError, pinned_urls
from mediagen.notify.models import DeliveryStatus, JobWebhook, WebhookDelivery

log = logging.getLogger(__name__)

EVENTS = ("start", "progress", "completed")
RESOLVE_TIMEOUT = 5.0
_TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}


class WebhookRejectedError(MediagenError):
    status_code = 422
    code = "invalid_webhook"


async def check_webhook(url: str, settings: Settings, owner: ApiKey | None) -> None:
    """Refuse (422) a webhook we could not sign or must not call.

    A host that does not resolve now is accepted: it may resolve by the time the job runs, and
    every delivery checks the address again before connecting."""
    if owner is None and not settings.webhook_secret:
        raise WebhookRejectedError(
            "webhooks of anonymous jobs need WEBHOOK_SECRET to be configured on the server; "
            "use an API key or leave `webhook` out"
        )
    if owner is not None and not owner.webhook_secret:
        raise WebhookRejectedError(
            "this API key has no webhook secret (it predates webhooks); create a new key"
        )
    try:
        await asyncio.wait_for(
            pinned_urls(url, allow_hosts=settings.webhook_allow_host_list), RESOLVE_TIMEOUT
        )
    except UnsafeURLError as exc:
        raise WebhookRejectedError(f"webhook: {exc}") from exc
    except (ResolveError, TimeoutError):
        return
    except (ValueError, OverflowError, httpx.InvalidURL) as exc:  # e.g. a label too long
        raise WebhookRejectedError(f"webhook: invalid URL: {exc}") from exc


async def record(job_id: uuid.UUID, url: str, events: list[str]) -> None:
    await JobWebhook.create(job_id=job_id, url=url, events=list(events))


def _payload(event: str, job: Job) -> dict[str, Any]:
    return {
        "event": event,
        "job_id": str(job.id),
        "status": str(job.status),
        "retry_count": job.retry_count,
        "error": job.error,
        "attempts": job.attempt,
        "progress": job.progress,
        "result_key": job.result_key,  # becomes `result_url` when sent
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


def _event_of(job: Job, to: JobStatus) -> str | None:
    if to in _TERMINAL:
        return "completed"
    if to is JobStatus.PROCESSING and job.attempt == 1:
        return "start"
    return None


async def _enqueue(
    hook: JobWebhook, job: Job, event: str, progress: dict[str, int] | None = None
) -> None:
    from mediagen.notify.dispatch import send_delivery

    payload = _payload(event, job)
    if progress is not None:  # the final progress is published before it is stored
        payload["progress"] = progress
    delivery = await WebhookDelivery.create(
        id=uuid.uuid4(), job_id=job.id, event=event, url=hook.url, payload=payload
    )
    await asyncio.to_thread(send_delivery, str(delivery.id))


async def job_moved(job_id: uuid.UUID | str, to: JobStatus) -> None:
    """After a successful transition to `to`: a delivery if the job's filter wants the event."""
    try:
        hook = await JobWebhook.get_or_none(job_id=job_id)
        if hook is None:
            return
        job = await Job.get_or_none(id=job_id)
        if job is None or (event := _event_of(job, to)) is None or event not in hook.events:
            return
        await _enqueue(hook, job, event)
    except Exception as exc:  # a notification layer: never fail the caller
        log.warning("job %s: webhook for %s not queued: %s", job_id, to, exc)


async def progress_changed(job_id: uuid.UUID | str, progress: dict[str, int]) -> None:
    try:
        hook = await JobWebhook.get_or_none(job_id=job_id)
        if hook is None or "progress" not in hook.events:
            return
        job = await Job.get_or_none(id=job_id)
        if job is not None:
            await _enqueue(hook, job, "progress", progress)
    except Exception as exc:
        log.warning("job %s: progress webhook not queued: %s", job_id, exc)


async def stranded_deliveries(settings: Settings) -> list[str]:
    """Pending deliveries whose publish or retry message was lost (broker down, worker killed):
    due more than a lease ago. They are stamped as due now, so the next sweeps leave them alone
    while this re-send is in the queue; an attempt on a finished delivery does nothing."""
    moment = now()
    overdue = moment - timedelta(seconds=settings.lease_seconds)
    ids = (
        await WebhookDelivery.filter(
            Q(next_attempt_at=None, created_at__lt=overdue) | Q(next_attempt_at__lt=overdue),
            status=DeliveryStatus.PENDING,
        )
        .limit(500)
        .values_list("id", flat=True)
    )
    if ids:
        await WebhookDelivery.filter(id__in=list(ids)).update(next_attempt_at=moment)
    return [str(delivery_id) for delivery_id in ids]
