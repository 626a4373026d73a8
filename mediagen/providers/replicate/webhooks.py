"""`POST /api/v1/webhooks/replicate`: Replicate tells us a prediction changed.

The body is trusted only after its Standard Webhooks signature checks out (secret
`REPLICATE_WEBHOOK_SECRET`, 5-minute replay window), and each `webhook-id` is acted on once.
A terminal event does not finish the job here: it sends the job's poll step at once, so the
worker takes the same idempotent path as polling (whichever comes first wins; the other finds
the job finished and does nothing).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from pydantic import BaseModel

from mediagen.broker import Outbox
from mediagen.errors import AuthenticationError, NotFoundError
from mediagen.jobs.dispatch import poll_task
from mediagen.jobs.models import Job
from mediagen.jobs.schemas import ErrorResponse
from mediagen.jobs.states import JobStatus
from mediagen.providers.base import finished
from mediagen.providers.replicate.signatures import WebhookVerificationError, verify_webhook

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])

SEEN_PREFIX = "mediagen:webhook:"
SEEN_TTL = 24 * 3600


class WebhookAck(BaseModel):
    status: str


async def accept(payload: dict[str, Any], outbox: Outbox) -> str:
    """Route one verified prediction update to its job; say what was done."""
    prediction_id = payload.get("id")
    if not isinstance(prediction_id, str):
        return "ignored"
    job = await Job.get_or_none(prediction_id=prediction_id)
    if job is None or job.status is not JobStatus.PROCESSING:
        return "ignored"  # unknown, already finished, or between attempts: polling covers it
    if not finished(payload.get("status")):
        return "noted"
    if not await outbox.send(poll_task(job.id, job.attempt)):
        raise ConnectionError("broker unavailable")
    return "dispatched"


@router.post(
    "/webhooks/replicate",
    response_model=WebhookAck,
    summary="Receive a Replicate prediction webhook",
    responses={
        401: {"model": ErrorResponse, "description": "Unsigned, forged or replayed."},
        404: {"model": ErrorResponse, "description": "Webhooks are not configured."},
    },
)
async def replicate_webhook(request: Request) -> WebhookAck:
    """Signed with Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`). Answers 200 for duplicates and unknown predictions, so Replicate stops
    retrying them."""
    secret = request.app.state.settings.replicate_webhook_secret.get_secret_value()
    if not secret:
        raise NotFoundError("webhooks are not configured (REPLICATE_WEBHOOK_SECRET is unset)")
    body = await request.body()
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if len(request.headers.getlist(name)) > 1:
            # The signature check and the dedupe must look at the same one: refuse the choice.
            raise AuthenticationError(f"webhook rejected: more than one {name} header")
    try:
        payload = verify_webhook(request.headers, body, secret)
    except WebhookVerificationError as exc:
        raise AuthenticationError(f"webhook rejected: {exc}") from exc
    seen: aioredis.Redis = request.app.state.redis
    key = SEEN_PREFIX + request.headers["webhook-id"]
    if not await seen.set(key, "1", nx=True, ex=SEEN_TTL):
        return WebhookAck(status="duplicate")
    try:
        outcome = await accept(payload, request.app.state.outbox)
    except BaseException:
        await seen.delete(key)  # let Replicate's retry of this delivery through
        raise
    log.info("webhook %s for prediction %s: %s", key, payload.get("id"), outcome)
    return WebhookAck(status=outcome)
