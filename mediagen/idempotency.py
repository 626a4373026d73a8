"""`Idempotency-Key` on the creating POSTs (IETF draft semantics), recorded in Postgres.

The same key with the same body within IDEMPOTENCY_TTL returns the first response and creates
nothing; the same key with another body is 422; a request whose twin is still being processed
is 409. Keys are scoped per API key. The record is claimed by an INSERT against a unique
(scope, key) constraint, so two concurrent requests cannot both create a job.

A request claims, creates, then completes its claim, each step committed on its own: the
creation stays one place's single transaction (`repository.insert`), dispatched after its
commit, and no transaction or row lock is held while a request checks its inputs and stores its
files. Holding the claim in the creation's transaction instead would make a twin wait on that
lock, and a host lost mid-request (not a closed connection) would hold it until Postgres noticed.

So a process that dies between the claim and the completion leaves a claim without an answer.
The claim therefore reserves the id of what the request creates (`resource_id`, passed to the
creation). A twin that finds an unanswered claim older than CLAIM_ABANDONED_AFTER, longer than
any request runs, takes the dead request's place: if the job (or batch) with the reserved id
exists, its answer is rebuilt from the row (`recall`), stored and replayed; if not, the twin
takes the claim over under a new id, by an UPDATE guarded on the old one, so that of two twins
only one creates. A claim younger than that is still a twin in progress: 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

from mediagen.errors import ConflictError, MediagenError
from mediagen.jobs.repository import now
from mediagen.keys.models import ApiKey

log = logging.getLogger(__name__)

TTL = timedelta(hours=24)
# An unanswered claim older than this was left by a process that died. A submission does no
# network work but its own Postgres statements and, for `data:` inputs, storage writes (one
# write's S3 retries end within about 6 minutes; only a batch of many inline files against a
# failing store could take longer). Until then a twin answers 409 (the client library retries
# it). Hosts' clocks must agree to well within this (the claim's time is the claimer's).
CLAIM_ABANDONED_AFTER = timedelta(minutes=10)

# The answer a creation gave, rebuilt from what it created (its reserved id), or None if it
# created nothing.
Recall = Callable[[uuid.UUID], Awaitable[dict[str, Any] | None]]


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
    # The id of the job (or batch) the claiming request creates; NULL for older claims.
    resource_id = fields.UUIDField(null=True)
    # When the request was claimed (or its claim taken over).
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "idempotency_keys"
        unique_together = (("scope", "key"),)


@dataclass(frozen=True)
class Claim:
    """A claimed key: create under `resource_id`, or, with `replay`, answer that instead."""

    resource_id: uuid.UUID
    replay: dict[str, Any] | None = None


def scope_of(owner: ApiKey | None) -> str:
    return str(owner.id) if owner else "anonymous"


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def claim(
    owner: ApiKey | None, key: str, body_hash: str, recall: Recall, endpoint: str = ""
) -> Claim:
    """Claim `key` for this request: the id to create under, or the first response to replay.
    `recall` rebuilds the answer of a creation whose process died before completing its claim.
    `endpoint` prefixes the scope of an endpoint other than /generate (`batches:`), so a key
    used on both never replays one's answer to the other."""
    scope = endpoint + scope_of(owner)
    for _ in range(3):
        resource_id = uuid.uuid4()
        try:
            await IdempotencyRecord.create(
                id=uuid.uuid4(),
                scope=scope,
                key=key,
                request_hash=body_hash,
                resource_id=resource_id,
            )
            return Claim(resource_id)
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
            )
        if record.response is not None:
            return Claim(record.resource_id or resource_id, record.response)
        if record.created_at >= now() - CLAIM_ABANDONED_AFTER:
            break  # a twin in progress
        found = await _abandoned(record, resource_id, recall)
        if found is not None:
            return found
    raise ConflictError("a request with this Idempotency-Key is still being processed")


async def _abandoned(
    record: IdempotencyRecord, resource_id: uuid.UUID, recall: Recall
) -> Claim | None:
    """A claim whose process died: its creation's answer, or the claim taken over under
    `resource_id`; None if another twin took it first."""
    if record.resource_id is not None:
        answer = await recall(record.resource_id)
        if answer is not None:
            await _answer(record.scope, record.key, record.resource_id, answer)
            log.warning(
                "idempotency claim abandoned after creating: answered from its row",
                extra={"resource_id": str(record.resource_id)},
            )
            return Claim(record.resource_id, answer)
    taken = await IdempotencyRecord.filter(
        id=record.id, response=None, **_holding(record.resource_id)
    ).update(resource_id=resource_id, created_at=now())
    if not taken:
        return None
    log.warning("idempotency claim abandoned before creating: taken over")
    return Claim(resource_id)


def _holding(resource_id: uuid.UUID | None) -> dict[str, Any]:
    """The filter of a claim still held under `resource_id` (None: a claim from before ids)."""
    return {"resource_id": resource_id} if resource_id else {"resource_id__isnull": True}


async def _answer(scope: str, key: str, resource_id: uuid.UUID, response: dict[str, Any]) -> int:
    return await IdempotencyRecord.filter(
        scope=scope, key=key, response=None, resource_id=resource_id
    ).update(response=response)


async def complete(
    owner: ApiKey | None,
    key: str,
    claimed: Claim,
    response: dict[str, Any],
    endpoint: str = "",
) -> None:
    """Store the answer of the request that holds `claimed`. A request slower than
    CLAIM_ABANDONED_AFTER whose claim a twin took over stores nothing (logged)."""
    if not await _answer(endpoint + scope_of(owner), key, claimed.resource_id, response):
        log.warning(
            "idempotency claim taken over while its request ran",
            extra={"resource_id": str(claimed.resource_id)},
        )


async def release(owner: ApiKey | None, key: str, claimed: Claim, endpoint: str = "") -> None:
    """Forget a claim whose request failed, so that a retry can run."""
    await IdempotencyRecord.filter(
        scope=endpoint + scope_of(owner), key=key, response=None, resource_id=claimed.resource_id
    ).delete()
