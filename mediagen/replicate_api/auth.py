"""Who calls `/v1`: Replicate's clients send `Authorization: Bearer <token>` (older ones
`Token <token>`); the token is a mediagen API key, checked by the rule of every surface
(`mediagen.keys.auth.identify`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from mediagen.keys.auth import bearer, identify
from mediagen.keys.models import ApiKey

SCHEMES = ("bearer", "token")


async def replicate_caller(
    request: Request,
    # Declared for the OpenAPI schema (the Bearer scheme); `identify` reads the header, since
    # HTTPBearer does not know `Token`.
    _: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> ApiKey | None:
    """The calling key, or None for an anonymous caller where AUTH_REQUIRED allows it."""
    return await identify(request.app.state, request.headers.get("authorization"), SCHEMES)


Caller = Annotated[ApiKey | None, Depends(replicate_caller)]


async def _reader(request: Request, owner: Caller) -> ApiKey | None:
    """A read, within RATE_LIMIT_READS_PER_MINUTE (429 past it)."""
    request.app.state.read_limiter.check(owner)
    return owner


Reader = Annotated[ApiKey | None, Depends(_reader)]
