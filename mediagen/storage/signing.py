"""Signed, expiring URLs for outputs served from local storage (`/media`), as S3 presigns its own.

A result URL is `/media/{key}?expires={unix time}&sig={HMAC-SHA256(key, expires)}`: it opens
that one object until it expires (MEDIA_URL_TTL), and nothing else. `/media` answers 403 to an
unsigned, altered or expired URL, so knowing a job id is no longer enough to fetch its output.
The signing key is MEDIA_SIGNING_KEY when set, else the deployment's own (`mediagen.signing`),
so every API and worker process of a deployment signs alike.
Expiry times are rounded up to the minute, so the URL of an output is the same for a minute.
"""

from __future__ import annotations

import math
import time
from urllib.parse import parse_qs

from mediagen.signing import deployment_key, matches, sign

ROW_NAME = "media-signing-key"  # the row that holds the key
ROUND = 60


class MediaSigner:
    def __init__(self, key: bytes, ttl: int) -> None:
        self._key = key
        self.ttl = ttl

    def _signature(self, key: str, expires: int) -> str:
        return sign(self._key, f"{key}\n{expires}".encode())

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
        return matches(signature, self._signature(key, int(expires)))


async def load_signer(configured: str, ttl: int) -> MediaSigner:
    """The deployment's signer: the configured key, or the deployment's own."""
    return MediaSigner(await deployment_key(ROW_NAME, configured), ttl)
