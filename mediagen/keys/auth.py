"""Who is calling: `Authorization: Bearer mg_...`, or nobody when keys are not required.

AUTH_REQUIRED=auto (the default) requires a key as soon as one exists, so a zero-setup local run
works without one and a deployment that has created keys refuses anonymous calls.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mediagen.errors import AuthenticationError
from mediagen.keys.models import ApiKey
from mediagen.keys.service import KeysExist, authenticate

bearer = HTTPBearer(auto_error=False, description="An API key: `mg_...` (see `mediagen keys`).")


async def caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ApiKey | None:
    """The calling key, or None for an anonymous caller where that is allowed."""
    if credentials is not None:
        return await authenticate(credentials.credentials)
    if request.headers.get("authorization"):
        raise AuthenticationError("use `Authorization: Bearer <API key>`")
    mode = request.app.state.settings.auth_required
    keys_exist: KeysExist = request.app.state.keys_exist
    if mode == "true" or (mode == "auto" and await keys_exist()):
        raise AuthenticationError("an API key is required: `Authorization: Bearer mg_...`")
    return None
