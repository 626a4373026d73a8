"""One delivery attempt: POST the signed payload to the checked address, record the outcome.

- 2xx: delivered.
- A network error, a host that does not resolve, no complete answer within WEBHOOK_TIMEOUT,
  408, 425, 429 or 5xx: retried as `mediagen.retry` says for webhooks (5 s .. 1 h by default,
  or the receiver's Retry-After when longer, capped at 1 h); after the last one: failed.
- Any other answer (3xx included: redirects are never followed) or a URL that now resolves to
  a non-public address: failed at once.

A receiver cannot hold a worker: WEBHOOK_TIMEOUT bounds the whole attempt (connect, send and
answer), at most ANSWER_BYTES of the answer are read, raw (a gzip bomb stays 4 KiB of bytes),
and attempts run on the worker's event loop (`Deliverer`), not in its task threads, so job
steps never wait for them. An attempt first marks the delivery as in flight (its
`next_attempt_at` moves to the end of the attempt): the sweeper, which re-sends deliveries
whose message was lost, and a duplicated message both leave it alone meanwhile.

Every attempt of one delivery carries the same `webhook-id`, a fresh `webhook-timestamp` and a
`webhook-signature` (v1) over "{id}.{timestamp}.{body}".
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks import Webhook

from mediagen import retry as retry_policy
from mediagen.batches.models import Batch
from mediagen.broker import Task
from mediagen.config import Settings
from mediagen.errors import OutboundError, RefusedAddressError
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import served
from mediagen.keys.models import ApiKey
from mediagen.notify import delivery_task
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.observability import metrics
from mediagen.observability.context import job_id as current_job
from mediagen.outbound import Outbound, Policy, classify
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = len(retry_policy.WEBHOOK_SCHEDULE) + 1
ANSWER_BYTES = 4096
IN_FLIGHT_MARGIN = 5.0  # beyond WEBHOOK_TIMEOUT before an attempt counts as lost

# The body of a job's delivery when the job was made through another API (the `surface` its
# row and payload carry): (job id, payload, storage, settings) -> the JSON to send. The worker
# fills this in; any other job's body is mediagen's own (the payload, `result_url` signed).
BodyMaker = Callable[[uuid.UUID, dict[str, Any], Storage, Settings], Awaitable[str]]
Bodies = Mapping[str, BodyMaker]


def policy(settings: Settings) -> Policy:
    return Policy(
        deadline=settings.webhook_timeout,
        max_bytes=ANSWER_BYTES,
        truncate=True,
        allow_hosts=settings.webhook_allow_host_list,
        redirects=0,
    )


async def _secret(delivery: WebhookDelivery, settings: Settings) -> str:
    """The secret of the key that owns the delivery's job (or batch); WEBHOOK_SECRET if none."""
    owner: Job | Batch = await (
        Job.get(id=delivery.job_id) if delivery.job_id else Batch.get(id=delivery.batch_id)
    )
    if owner.api_key_id is not None:
        key = await ApiKey.get_or_none(id=owner.api_key_id)
        return (key.webhook_secret or "") if key else ""
    return settings.webhook_secret


async def _body(
    delivery: WebhookDelivery, storage: Storage, settings: Settings, bodies: Bodies
) -> str:
    data = dict(delivery.payload)
    surface = data.get("surface")
    if delivery.job_id is not None and surface is not None and surface in bodies:
        return await bodies[surface](delivery.job_id, data, storage, settings)
    if delivery.job_id is not None:  # a job's event (a batch's carries no result)
        data = await served(data, storage)
    return json.dumps(data, separators=(",", ":"))


async def _claim(delivery: WebhookDelivery, settings: Settings) -> bool:
    """Mark the delivery in flight until the attempt must be over (compare-and-set on its due
    time, so of two copies of one message only one sends)."""
    now = datetime.now(UTC)
    due = delivery.next_attempt_at
    if due is not None and due > now + timedelta(seconds=1):
        return False  # in flight elsewhere, or not due yet
    until = now + timedelta(seconds=settings.webhook_timeout + IN_FLIGHT_MARGIN)
    claimed = await WebhookDelivery.filter(
        id=delivery.id,
        status=DeliveryStatus.PENDING,
        attempts=delivery.attempts,
        next_attempt_at=due,
    ).update(next_attempt_at=until)
    return claimed == 1


async def attempt(
    delivery_id: str,
    settings: Settings,
    storage: Storage,
    outbound: Outbound,
    bodies: Bodies | None = None,
) -> float | None:
    """Make one attempt; the countdown of the next one, or None when the delivery is settled
    (or was not this call's to make). `bodies`: the body makers of jobs made through another
    API (`Bodies`)."""
    delivery = await WebhookDelivery.get_or_none(id=delivery_id)
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    if delivery.job_id is not None:
        current_job.set(str(delivery.job_id))  # this attempt's lines are about its job
    if not await _claim(delivery, settings):
        return None
    attempts = delivery.attempts + 1
    code: int | None = None
    retry_after: float | None = None
    error: str | None = None
    retry = refused = False
    try:
        secret = await _secret(delivery, settings)
        if not secret:
            raise ValueError("no webhook secret to sign with")
        body = await _body(delivery, storage, settings, bodies or {})
        sent = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mediagen-webhooks",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery.message_id, sent, body),
        }
        reply = await outbound.call(
            "POST", delivery.url, policy(settings), content=body.encode(), headers=headers
        )
        code = reply.status
        verdict = classify(code)
        if verdict != "ok":
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
            retry = verdict == "retry"
            retry_after = reply.retry_after
    except OutboundError as exc:
        error, retry = exc.message, exc.retryable
        refused = isinstance(exc, RefusedAddressError)
    except Exception as exc:  # an unusable secret or URL: retrying would not help
        error = f"{type(exc).__name__}: {exc}"
    now = datetime.now(UTC)
    countdown: float | None = None
    fields: dict[str, object] = {
        "attempts": attempts,
        "last_status_code": code,
        "last_error": error,
        "next_attempt_at": None,
    }
    if error is None:
        fields |= {"status": DeliveryStatus.DELIVERED, "delivered_at": now}
    elif retry and attempts < MAX_ATTEMPTS:
        countdown = retry_policy.webhooks(settings).delay(attempts - 1, retry_after)
        fields["next_attempt_at"] = now + timedelta(seconds=countdown)
    else:
        fields["status"] = DeliveryStatus.FAILED
    # Guarded on the attempt count: a duplicated task message records nothing twice.
    updated = await WebhookDelivery.filter(
        id=delivery.id, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(**fields)
    if updated != 1:
        return None
    metrics.webhook_delivery(
        "delivered"
        if error is None
        else "retry"
        if countdown is not None
        else "refused"
        if refused
        else "failed"
    )
    log.info(
        "webhook %s (%s, %s) attempt %d: %s%s",
        delivery.message_id,
        delivery.event,
        f"job {delivery.job_id}" if delivery.job_id else f"batch {delivery.batch_id}",
        attempts,
        error or "delivered",
        f"; next in {countdown:g}s" if countdown is not None else "",
    )
    return countdown


class Deliverer:
    """Attempts run as tasks on the worker's event loop, at most WEBHOOK_CONCURRENCY at once
    per process; a task thread only hands the id over and returns."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        outbound: Outbound,
        publish: Callable[[Task], asyncio.Future[bool]],
        bodies: Bodies | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.outbound = outbound
        self.publish = publish
        self.bodies: Bodies = dict(bodies or {})
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, delivery_id: str) -> None:
        """Start an attempt (call on the loop)."""
        task = asyncio.get_running_loop().create_task(self._run(delivery_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, delivery_id: str) -> None:
        async with self._slots:
            try:
                countdown = await attempt(
                    delivery_id, self.settings, self.storage, self.outbound, self.bodies
                )
            except Exception:  # the delivery stays pending; the sweeper sends it again
                log.exception("webhook delivery %s: attempt failed", delivery_id)
                return
        if countdown is not None:
            self.publish(delivery_task(delivery_id, countdown))

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
