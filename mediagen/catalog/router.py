"""`GET /api/v1/models`: the models a key may name, with their input schemas where known."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from mediagen.catalog.listing import ModelList
from mediagen.jobs.router import Reader
from mediagen.jobs.schemas import ErrorResponse

router = APIRouter(tags=["models"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A valid API key is required."},
    429: {"model": ErrorResponse, "description": "Read rate limit; see Retry-After."},
}


@router.get(
    "/models",
    response_model=ModelList,
    responses=_RESPONSES,
    summary="List the models you may use",
)
async def list_models(request: Request, owner: Reader) -> ModelList:
    """Every model a request may give as `model`, the default first (`default: true`: what a
    request that names none runs on), with the provider that runs it and the JSON Schema of its
    inputs where the provider gives one: the built-in generator's `parameters`, a Cog server's
    `Input` (cached a few minutes); null for Replicate models. Without a models file, names may
    be ALLOWED_MODELS patterns such as `acme/*`."""
    state = request.app.state
    listing: ModelList = await state.input_schemas.listing(state.catalog)
    return listing
