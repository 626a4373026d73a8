"""Who is calling: `Authorization: Bearer mg_...`, or nobody when keys are not required.

AUTH_REQUIRED=auto (the default) requires a key as soon as one has been made, so a zero-setup
local run works without one and a deployment that has created keys refuses anonymous calls,
even after its last key is revoked (only AUTH_REQUIRED=false opens it again). Both the key
and the "does one exist" answer come from the process's `KeyCache`: no query per request.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mediagen.errors import AuthenticationError
from mediagen.keys.cache import KeyCache
from mediagen.keys.models import ApiKey

bearer = HTTPBearer(auto_error=False, description="An API key: `mg_...` (see `mediagen keys`).")


async def caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ApiKey | None:
    """The calling key, or None for an anonymous caller where that is allowed."""
    if credentials is None and request.headers.get("authorization"):
        raise AuthenticationError("use `Authorization: Bearer <API key>`")
    return await identify(request, credentials.credentials if credentials else None)


async def identify(request: Request, secret: str | None) -> ApiKey | None:
    """The key of `secret`, or, without one, None where AUTH_REQUIRED lets anonymous callers
    in (the one rule of every surface: `/api/v1` and Replicate's `/v1`)."""
    keys: KeyCache = request.app.state.keys
    if secret is not None:
        return await keys.authenticate(secret)
    mode = request.app.state.settings.auth_required
    if mode == "true" or (mode == "auto" and await keys.required()):
        raise AuthenticationError("an API key is required: `Authorization: Bearer mg_...`")
    return None
