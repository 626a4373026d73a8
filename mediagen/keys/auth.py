"""Who is calling: `Authorization: Bearer mg_...`, or nobody when keys are not required.

AUTH_REQUIRED=auto (the default) requires a key as soon as one has been made, so a zero-setup
local run works without one and a deployment that has created keys refuses anonymous calls,
even after its last key is revoked (only AUTH_REQUIRED=false opens it again). Both the key
and the "does one exist" answer come from the process's `KeyCache`: no query per request.

`identify` is the one rule, for every surface: the `/api/v1` dependency (`caller`), the fast
paths (which hand any refusal to the route), the re-check of an open event stream, and
Replicate's `/v1` (which also takes the `Token` scheme).
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from mediagen.errors import AuthenticationError
from mediagen.keys.cache import KeyCache
from mediagen.keys.models import ApiKey

bearer = HTTPBearer(auto_error=False, description="An API key: `mg_...` (see `mediagen keys`).")
BEARER = ("bearer",)


async def caller(
    request: Request,
    # Declared for the OpenAPI schema (the Bearer scheme); `identify` reads the header.
    _: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ApiKey | None:
    """The calling key, or None for an anonymous caller where that is allowed."""
    return await identify(request.app.state, request.headers.get("authorization"))


async def identify(
    state: State, authorization: str | None, schemes: Collection[str] = BEARER
) -> ApiKey | None:
    """The key an `Authorization` header (`<scheme> <key>`, a scheme of `schemes`) names, or,
    without one, None where anonymous callers are let in; AuthenticationError otherwise.
    `state`: the app's (its `keys` cache and `settings`)."""
    if authorization:
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() not in schemes or not secret:
            raise AuthenticationError("use `Authorization: Bearer <API key>`")
        keys: KeyCache = state.keys
        return await keys.authenticate(secret)
    if not await anonymous_allowed(state):
        raise AuthenticationError("an API key is required: `Authorization: Bearer mg_...`")
    return None


async def anonymous_allowed(state: State) -> bool:
    """Whether callers without a key are let in now: AUTH_REQUIRED=false, or `auto` while no
    key was ever made."""
    mode = state.settings.auth_required
    keys: KeyCache = state.keys
    return mode == "false" or (mode == "auto" and not await keys.required())
