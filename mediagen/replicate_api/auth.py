"""Who calls `/v1`: Replicate's clients send `Authorization: Bearer <token>` (older ones
`Token <token>`); the token is a mediagen API key, checked as on `/api/v1`."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from mediagen.errors import AuthenticationError
from mediagen.keys.auth import bearer, identify
from mediagen.keys.models import ApiKey

_SCHEMES = ("bearer", "token")


async def replicate_caller(
    request: Request,
    # Declared for the OpenAPI schema (the Bearer scheme); the header is parsed below, since
    # HTTPBearer does not know `Token`.
    _: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ApiKey | None:
    """The calling key, or None for an anonymous caller where AUTH_REQUIRED allows it."""
    header = request.headers.get("authorization")
    if not header:
        return await identify(request, None)
    scheme, _sep, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() not in _SCHEMES or not secret:
        raise AuthenticationError("use `Authorization: Bearer <API key>`")
    return await identify(request, secret)
