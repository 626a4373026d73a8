"""Signed, expiring URLs for outputs served from local storage (`/media`), as S3 presigns its own.

A result URL is `/media/{key}?expires={unix time}&sig={HMAC-SHA256(key, expires)}`: it opens
that one object until it expires (MEDIA_URL_TTL), and nothing else. `/media` answers 403 to an
unsigned, altered or expired URL, so knowing a job id is no longer enough to fetch its output.
The signing key is MEDIA_SIGNING_KEY when set, else one made at random the first time and kept
in Postgres (`service_secrets`), so every API and worker process of a deployment signs alike.
Expiry times are rounded up to the minute, so the URL of an output is the same for a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from urllib.parse import parse_qs

from tortoise import fields
from tortoise.models import Model

ROW_NAME = "media-signing-key"  # the row that holds the key
ROUND = 60


class ServiceSecret(Model):
    """A secret the deployment makes once and every process shares."""

    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.CharField(max_length=256)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "service_secrets"


class MediaSigner:
    def __init__(self, key: bytes, ttl: int) -> None:
        self._key = key
        self.ttl = ttl

    def _signature(self, key: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, key: str, now: float | None = None) -> str:
        """`expires=...&sig=...` for `key`."""
        moment = time.time() if now is None else now
        expires = math.ceil((moment + self.ttl) / ROUND) * ROUND
        return f"expires={expires}&sig={self._signature(key, expires)}"

    def verify(self, key: str, query_string: bytes | str, now: float | None = None) -> bool:
        """Whether the query string signs `key` and has not expired."""
        raw = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
        params = parse_qs(raw)
        expires, signature = params.get("expires", [""])[0], params.get("sig", [""])[0]
        if not expires.isdigit() or not signature:
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        # As bytes: compare_digest refuses str with non-ASCII characters (a forged `sig`).
        expected = self._signature(key, int(expires)).encode()
        return hmac.compare_digest(signature.encode(), expected)


async def load_signer(configured: str, ttl: int) -> MediaSigner:
    """The deployment's signer: the configured key, or the one kept in Postgres (made now if
    this is the first process ever to ask)."""
    if configured:
        return MediaSigner(configured.encode(), ttl)
    made = secrets.token_urlsafe(32)
    await ServiceSecret.get_or_create(name=ROW_NAME, defaults={"value": made})
    stored = await ServiceSecret.get(name=ROW_NAME)
    return MediaSigner(stored.value.encode(), ttl)
