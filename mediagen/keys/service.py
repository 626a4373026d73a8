"""Creating, listing, revoking and checking API keys.

A key is `mg_` + 32 random URL-safe bytes. It is shown once, at creation; the database keeps its
SHA-256 (a fast hash is right for a 256-bit random secret: there is nothing to brute-force) and
its first characters, so `mediagen keys list` can tell keys apart.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from datetime import UTC, datetime

from mediagen.errors import NotFoundError
from mediagen.keys.models import ApiKey

PREFIX = "mg_"
SHOWN = 11  # characters of the key kept in clear (`mg_` + 8)


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(name: str, max_priority: str | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret value (the only time the value exists in clear). Its priority
    ceiling is `max_priority` (None: the DEFAULT_MAX_PRIORITY setting, whatever it becomes)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    key = await ApiKey.create(
        id=uuid.uuid4(),
        name=name,
        prefix=secret[:SHOWN],
        key_hash=hash_key(secret),
        webhook_secret=new_webhook_secret(),
        max_priority=max_priority,
    )
    return key, secret


async def set_max_priority(key_id_or_prefix: str, max_priority: str | None) -> ApiKey:
    """Change an active key's priority ceiling (None: back to DEFAULT_MAX_PRIORITY). API
    processes see it once they drop their cached keys (the caller announces the change)."""
    key = await find_key(key_id_or_prefix)
    await ApiKey.filter(id=key.id).update(max_priority=max_priority)
    key.max_priority = max_priority
    return key


async def set_max_queue_seconds(key_id_or_prefix: str, seconds: int | None) -> ApiKey:
    """Change how long an active key's jobs may wait to start when they do not say (None: the
    model's default, else MAX_QUEUE_SECONDS). The caller announces the change."""
    key = await find_key(key_id_or_prefix)
    await ApiKey.filter(id=key.id).update(max_queue_seconds=seconds)
    key.max_queue_seconds = seconds
    return key


async def set_weight(key_id_or_prefix: str, weight: int) -> ApiKey:
    """Change an active key's share of the starts (`weight` turns to a weight-1 key's one);
    its jobs queued from now on take turns at it (the caller tells Redis too)."""
    key = await find_key(key_id_or_prefix)
    await ApiKey.filter(id=key.id).update(weight=weight)
    key.weight = weight
    return key


async def list_keys() -> list[ApiKey]:
    return await ApiKey.all().order_by("created_at")


async def find_key(key_id_or_prefix: str) -> ApiKey:
    """The one active key with this id or `mg_...` prefix; NotFoundError otherwise."""
    try:
        query = ApiKey.filter(id=uuid.UUID(key_id_or_prefix))
    except ValueError:
        query = ApiKey.filter(prefix=key_id_or_prefix)
    keys = await query.filter(revoked_at=None)
    if len(keys) != 1:
        raise NotFoundError(f"no single active key matches {key_id_or_prefix!r}")
    return keys[0]


async def revoke_key(key_id_or_prefix: str) -> ApiKey:
    key = await find_key(key_id_or_prefix)
    await ApiKey.filter(id=key.id).update(revoked_at=datetime.now(UTC))
    return key


async def revoke_for_deletion(key_id_or_prefix: str) -> ApiKey:
    """The one key, revoked or not, with this id or prefix, revoked now if it was not (its
    data is deleted next: nothing new may be made meanwhile); NotFoundError otherwise."""
    try:
        query = ApiKey.filter(id=uuid.UUID(key_id_or_prefix))
    except ValueError:
        query = ApiKey.filter(prefix=key_id_or_prefix)
    keys = await query
    if len(keys) != 1:
        raise NotFoundError(f"no single key matches {key_id_or_prefix!r}")
    if keys[0].revoked_at is None:
        await ApiKey.filter(id=keys[0].id).update(revoked_at=datetime.now(UTC))
    return keys[0]


async def find_active_key(digest: str) -> ApiKey | None:
    """The active key whose SHA-256 is `digest` (see `mediagen.keys.cache` for the caching)."""
    return await ApiKey.get_or_none(key_hash=digest, revoked_at=None)


async def any_key_made() -> bool:
    """Whether a key was ever created, revoked or not (AUTH_REQUIRED=auto requires keys then)."""
    return await ApiKey.exists()
