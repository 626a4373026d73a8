"""Verify Replicate's webhooks: Standard Webhooks, HMAC-SHA256 over "{id}.{timestamp}.{body}".

`standardwebhooks` decodes the `whsec_` secret and computes the signature; the checks around it
are ours so the replay window is a parameter (the package fixes it at 5 minutes) and every
failure, including malformed headers the package lets escape as other errors, is one type.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError


class WebhookVerificationError(ValueError):
    """The webhook is unsigned, forged, malformed or outside the replay window: answer 4xx."""


def verify_webhook(
    headers: Mapping[str, str], body: bytes, secret: str, tolerance: float = 300
) -> dict[str, Any]:
    """The JSON payload of a webhook whose signature and timestamp check out."""
    lowered = {key.lower(): value for key, value in headers.items()}
    message_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"invalid webhook-timestamp {timestamp!r}") from exc
    if abs(time.time() - sent) > tolerance:
        raise WebhookVerificationError(
            f"webhook timestamp is more than {tolerance:g}s away from now (replayed?)"
        )
    try:
        signer = Webhook(secret)
    except (EmptyWebhookSecretError, ValueError) as exc:
        raise WebhookVerificationError("the webhook secret is empty or not base64") from exc
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise WebhookVerificationError("webhook body is not UTF-8") from exc
    expected = signer.sign(message_id, datetime.fromtimestamp(sent, UTC), text).partition(",")[2]
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            break
    else:
        raise WebhookVerificationError("no valid webhook signature")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise WebhookVerificationError("webhook body is not JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    return payload
