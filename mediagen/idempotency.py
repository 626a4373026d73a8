"""`Idempotency-Key` on `POST /generate` (IETF draft semantics), recorded in Postgres.

The same key with the same body within IDEMPOTENCY_TTL returns the first response and creates
nothing; the same key with another body is 422; a request whose twin is still being processed
is 409. Keys are scoped per API key. The record is claimed by an INSERT against a unique
(scope, key) constraint, so two concurrent requests cannot both create a job.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

from mediagen.errors import ConflictError, MediagenError
from mediagen.jobs.repository import now
from mediagen.keys.models import ApiKey

TTL = timedelta(hours=24)


class IdempotencyMismatchError(MediagenError):
    status_code = 422
    code = "idempotency_key_mismatch"


class IdempotencyRecord(Model):
    id = fields.UUIDField(primary_key=True)
    # The API key's id, or "anonymous" (prefixed by the endpoint's name, if not /generate).
    scope = fields.CharField(max_length=64)
    key = fields.CharField(max_length=255)
    request_hash = fields.CharField(max_length=64)
    response: dict[str, Any] | None = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "idempotency_keys"
        unique_together = (("scope", "key"),)


def scope_of(owner: ApiKey | None) -> str:
    return str(owner.id) if owner else "anonymous"


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def claim(
    owner: ApiKey | None, key: str, body_hash: str, endpoint: str = ""
) -> dict[str, Any] | None:
    """Claim `key` for this request: None to go ahead, or the first response to replay.
    `endpoint` prefixes the scope of an endpoint other than /generate (`batches:`), so a key
    used on both never replays one's answer to the other."""
    scope = endpoint + scope_of(owner)
    for _ in range(2):
        try:
            await IdempotencyRecord.create(
                id=uuid.uuid4(), scope=scope, key=key, request_hash=body_hash
            )
            return None
        except IntegrityError:
            record = await IdempotencyRecord.get_or_none(scope=scope, key=key)
            if record is None:
                continue  # released meanwhile: claim again
            if record.created_at < now() - TTL:
                await IdempotencyRecord.filter(id=record.id).delete()
                continue
            if record.request_hash != body_hash:
                raise IdempotencyMismatchError(
                    "this Idempotency-Key was used with a different request body"
                ) from None
            if record.response is None:
                raise ConflictError(
                    "a request with this Idempotency-Key is still being processed"
                ) from None
            return record.response
    raise ConflictError("a request with this Idempotency-Key is still being processed")


async def complete(
    owner: ApiKey | None, key: str, response: dict[str, Any], endpoint: str = ""
) -> None:
    await IdempotencyRecord.filter(scope=endpoint + scope_of(owner), key=key).update(
        response=response
    )


async def release(owner: ApiKey | None, key: str, endpoint: str = "") -> None:
    """Forget a claim whose request failed, so that a retry can run."""
    await IdempotencyRecord.filter(
        scope=endpoint + scope_of(owner), key=key, response=None
    ).delete()
