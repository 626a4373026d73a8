"""One delivery attempt: POST the signed payload to the checked address, record the outcome.

- 2xx: delivered.
- A network error, a host that does not resolve, 408, 429 or 5xx: retried after
  WEBHOOK_RETRY_DELAY x (1, 6, 24, 120, 360, 720) (5 s .. 1 h by default), or after the
  receiver's Retry-After (seconds, capped at 1 h) when it is longer; after the last one: failed.
- Any other answer (3xx included: redirects are never followed) or a URL that now resolves to
  a private address: failed at once.

Every attempt of one delivery carries the same `webhook-id`, a fresh `webhook-timestamp` and a
`webhook-signature` (v1) over "{id}.{timestamp}.{body}".
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks import Webhook

from mediagen.config import Settings
from mediagen.jobs.models import Job
from mediagen.keys.models import ApiKey
from mediagen.netguard import ResolveError, UnsafeURLError, pinned_urls
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

SCHEDULE = (1, 6, 24, 120, 360, 720)  # multiples of WEBHOOK_RETRY_DELAY
MAX_ATTEMPTS = len(SCHEDULE) + 1
TIMEOUT = 10.0
MAX_RETRY_AFTER = 3600.0
_RETRYABLE = {408, 429}


def retry_delay(settings: Settings, attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt, after `attempts` failed ones."""
    delay = settings.webhook_retry_delay * SCHEDULE[min(attempts, len(SCHEDULE)) - 1]
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    return None


async def _secret(job_id: uuid.UUID, settings: Settings) -> str:
    job = await Job.get(id=job_id)
    if job.api_key_id is not None:
        key = await ApiKey.get_or_none(id=job.api_key_id)
        return (key.webhook_secret or "") if key else ""
    return settings.webhook_secret


async def _body(delivery: WebhookDelivery, storage: Storage) -> str:
    data = dict(delivery.payload)
    key = data.pop("result_key", None)
    data["result_url"] = await storage.url_for(key) if key else None
    return json.dumps(data, separators=(",", ":"))


async def _post(url: str, headers: dict[str, str], body: str, settings: Settings) -> httpx.Response:
    """POST to each checked address in turn until one connects; no redirects."""
    parsed = httpx.URL(url)
    error: httpx.TransportError | None = None
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        for pinned in await pinned_urls(url, allow_hosts=settings.webhook_allow_host_list):
            request = client.build_request(
                "POST",
                pinned,
                content=body.encode(),
                headers={**headers, "Host": parsed.netloc.decode("ascii")},
                extensions={"sni_hostname": parsed.host},
            )
            try:
                return await client.send(request)
            except httpx.ConnectError as exc:
                error = exc
    assert error is not None
    raise error


async def attempt(delivery_id: str, settings: Settings, storage: Storage) -> float | None:
    """Make one attempt; the countdown of the next one, or None when the delivery is settled."""
    delivery = await WebhookDelivery.get_or_none(id=delivery_id)
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    attempts = delivery.attempts + 1
    code: int | None = None
    retry_after: float | None = None
    error: str | None = None
    retry = False
    try:
        secret = await _secret(delivery.job_id, settings)
        if not secret:
            raise UnsafeURLError("no webhook secret to sign with")
        body = await _body(delivery, storage)
        sent = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mediagen-webhooks",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery.message_id, sent, body),
        }
        response = await _post(delivery.url, headers, body, settings)
        await response.aclose()
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
            retry = code in _RETRYABLE or code >= 500
            retry_after = _retry_after(response)
    except UnsafeURLError as exc:
        error = str(exc)
    except (ResolveError, httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        retry = True
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
        countdown = retry_delay(settings, attempts, retry_after)
        fields["next_attempt_at"] = now + timedelta(seconds=countdown)
    else:
        fields["status"] = DeliveryStatus.FAILED
    # Guarded on the attempt count: a duplicated task message records nothing twice.
    updated = await WebhookDelivery.filter(
        id=delivery.id, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(**fields)
    if updated != 1:
        return None
    log.info(
        "webhook %s (%s, job %s) attempt %d: %s%s",
        delivery.message_id,
        delivery.event,
        delivery.job_id,
        attempts,
        error or "delivered",
        f"; next in {countdown:g}s" if countdown is not None else "",
    )
    return countdown
