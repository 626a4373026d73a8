"""Client webhooks on the job's side: checked at submit, and found again by the sweeper when a
delivery's message was lost.

The rows themselves are written by the job's own statements (`mediagen.jobs.repository`): the
webhook with the job, and each delivery with the transition whose event it reports: `start`
(the first move to processing), `progress` (the reported progress changed) and `completed` (any
terminal state: completed, failed or canceled; the payload's `status` says which).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from tortoise.expressions import Q

from mediagen.config import Settings
from mediagen.errors import MediagenError, OutboundError, RefusedAddressError
from mediagen.keys.models import ApiKey
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.outbound import pinned_urls

log = logging.getLogger(__name__)

EVENTS = ("start", "progress", "completed")
RESOLVE_TIMEOUT = 5.0


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
    except RefusedAddressError as exc:
        raise WebhookRejectedError(f"webhook: {exc.message}") from exc
    except (OutboundError, TimeoutError):  # does not resolve (yet)
        return
    except (ValueError, OverflowError) as exc:  # e.g. a label too long
        raise WebhookRejectedError(f"webhook: invalid URL: {exc}") from exc


async def stranded_deliveries(settings: Settings) -> list[str]:
    """Pending deliveries whose publish or retry message was lost (broker down, worker killed):
    due more than a lease ago. They are stamped as due now, so the next sweeps leave them alone
    while this re-send is in the queue; an attempt on a finished delivery does nothing."""
    moment = datetime.now(UTC)
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
