"""The deployment's own secrets, and the HMAC signatures made with them.

Some secrets need only be the same in every API and worker process of a deployment, not chosen
by anyone: the key that signs local output URLs (`mediagen.storage.signing`) and the key of Cog
servers' webhook tokens (`mediagen.providers.cog.ids`). Each is the configured value when one is
set, else one made at random by the first process that asks and kept in Postgres
(`service_secrets`), so every process reads the same one; a process reads it once.

A signature is HMAC-SHA256, url-safe base64 without padding (43 characters), compared in
constant time as bytes (so a forged value with non-ASCII characters is refused, never raised on).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from tortoise import fields
from tortoise.models import Model

_keys: dict[tuple[str, str], bytes] = {}  # (row name, configured value) -> key


class ServiceSecret(Model):
    """A secret the deployment makes once and every process shares."""

    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.CharField(max_length=256)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "service_secrets"


async def deployment_key(name: str, configured: str) -> bytes:
    """`configured` when set, else the secret kept in the row `name` (made now if this is the
    first process ever to ask)."""
    if configured:
        return configured.encode()
    key = _keys.get((name, configured))
    if key is None:
        await ServiceSecret.get_or_create(name=name, defaults={"value": secrets.token_urlsafe(32)})
        stored = await ServiceSecret.get(name=name)
        key = _keys[(name, configured)] = stored.value.encode()
    return key


def sign(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 of `message` under `key`, url-safe base64 without padding."""
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matches(given: str, expected: str) -> bool:
    """Whether `given` is `expected`, in constant time (any string may be given)."""
    return hmac.compare_digest(given.encode(), expected.encode())
