"""One delivery attempt: POST the signed payload to the checked address, record the outcome.

- 2xx: delivered.
- A network error, a host that does not resolve, no complete answer within WEBHOOK_TIMEOUT,
  408, 425, 429 or 5xx: retried as `mediagen.retry` says for webhooks (5 s .. 1 h by default,
  or the receiver's Retry-After when longer, capped at 1 h); after the last one: failed.
- Any other answer (3xx included: redirects are never followed) or a URL that now resolves to
  a non-public address: failed at once.

A receiver cannot hold a worker: WEBHOOK_TIMEOUT bounds the whole attempt (connect, send and
answer), at most ANSWER_BYTES of the answer are read, raw (a gzip bomb stays 4 KiB of bytes),
and attempts run on the worker's event loop (`mediagen.notify.deliverer`), not in its task
threads, so job steps never wait for them. An attempt first marks the delivery as in flight (its
`next_attempt_at` moves to the end of the attempt): the sweeper, which re-sends deliveries
whose message was lost, and a duplicated message both leave it alone meanwhile.

Every attempt of one delivery carries the same `webhook-id`, a fresh `webhook-timestamp` and a
`webhook-signature` (v1) over "{id}.{timestamp}.{body}".
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from mediagen import retry as retry_policy
from mediagen.batches.models import Batch
from mediagen.config import Settings
from mediagen.errors import OutboundError, RefusedAddressError
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import served
from mediagen.keys.models import ApiKey
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


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the countdown of the next one (None: settled, or not this
    attempt's to make), and what it showed of the receiver (`mediagen.notify.circuit`): it
    answered (True), it failed (False), or nothing (None)."""

    countdown: float | None = None
    answered: bool | None = None


async def owner_key(delivery: WebhookDelivery) -> uuid.UUID | None:
    """The key that owns the delivery's job (or batch); None for an anonymous one."""
    owner = Job if delivery.job_id is not None else Batch
    found = await owner.filter(id=delivery.job_id or delivery.batch_id).values_list(
        "api_key_id", flat=True
    )
    key_id = found[0] if found else None
    return key_id if isinstance(key_id, uuid.UUID) else None


def receiver(url: str) -> str:
    """The receiver a delivery goes to, as fairness and circuits count it: host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "invalid"
    return f"{(parts.hostname or '').lower()}:{port}"


async def _secret(key_id: uuid.UUID | None, settings: Settings) -> str:
    """The secret of the key that owns the delivery's job (or batch); WEBHOOK_SECRET if none."""
    if key_id is not None:
        key = await ApiKey.get_or_none(id=key_id)
        return (key.webhook_secret or "") if key else ""
    return settings.webhook_secret.get_secret_value()


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


def due(delivery: WebhookDelivery) -> bool:
    """Whether a pending delivery is this message's to act on: not in flight elsewhere, and not
    due later (then another message of it is on its way)."""
    when = delivery.next_attempt_at
    return when is None or when <= datetime.now(UTC) + timedelta(seconds=1)


async def move(delivery: WebhookDelivery, seconds: float) -> bool:
    """Set the delivery's next attempt `seconds` from now, if it is still as it was read
    (compare-and-set on its due time: of two copies of one message only one moves it)."""
    moved = await WebhookDelivery.filter(
        id=delivery.id,
        status=DeliveryStatus.PENDING,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
    ).update(next_attempt_at=datetime.now(UTC) + timedelta(seconds=seconds))
    return moved == 1


async def _claim(delivery: WebhookDelivery, settings: Settings) -> bool:
    """Mark the delivery in flight until the attempt must be over."""
    return due(delivery) and await move(delivery, settings.webhook_timeout + IN_FLIGHT_MARGIN)


async def attempt(
    delivery: WebhookDelivery,
    key_id: uuid.UUID | None,
    settings: Settings,
    storage: Storage,
    outbound: Outbound,
    bodies: Bodies | None = None,
) -> Outcome:
    """Make one attempt of a pending `delivery` (its owner: `key_id`), unless another is in
    flight. `bodies`: the body makers of jobs made through another API (`Bodies`)."""
    if delivery.job_id is not None:
        current_job.set(str(delivery.job_id))  # this attempt's lines are about its job
    if not await _claim(delivery, settings):
        return Outcome()
    attempts = delivery.attempts + 1
    code: int | None = None
    retry_after: float | None = None
    error: str | None = None
    retry = refused = False
    answered: bool | None = None
    try:
        secret = await _secret(key_id, settings)
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
        answered = verdict != "retry"
        if verdict != "ok":
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
            retry = verdict == "retry"
            retry_after = reply.retry_after
    except OutboundError as exc:
        error, retry = exc.message, exc.retryable
        refused = isinstance(exc, RefusedAddressError)
        answered = False if exc.retryable else None  # no answer in time, no connection
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
        return Outcome(None, answered)
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
    return Outcome(countdown, answered)
