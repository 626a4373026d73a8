"""HTTP endpoints of input files. Thin: authenticate, stream the body to the service."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from mediagen.files import service, upload
from mediagen.files.schemas import FileInfo
from mediagen.jobs.router import READ, Caller, Reader
from mediagen.jobs.schemas import ErrorResponse
from mediagen.jobs.service import json_response

router = APIRouter(tags=["files"])
PATH = "/files"

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A valid API key is required."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **READ,
    404: {"model": ErrorResponse, "description": "No unexpired file of yours has this id."},
}
_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        }
    },
}


def upload_limit(max_file_bytes: int) -> int:
    """The most a whole upload request may carry: the file and the form around it."""
    return max_file_bytes + upload.OVERHEAD


@router.post(
    PATH,
    status_code=201,
    response_model=FileInfo,
    summary="Upload an input file",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        **_AUTH,
        413: {
            "model": ErrorResponse,
            "description": "The file exceeds MAX_FILE_BYTES, is an image of more pixels "
            "than accepted (`image_too_large`), or the key's input files would pass its "
            "storage quota (`storage_quota_exceeded`).",
        },
        415: {"model": ErrorResponse, "description": "Not an image, audio or video we accept."},
        422: {"model": ErrorResponse, "description": "Not multipart/form-data with `file`."},
        429: {"model": ErrorResponse, "description": "Rate limit; see Retry-After."},
    },
)
async def create_file(request: Request, owner: Caller) -> Response:
    """Store a file for jobs to use: give its `uri` as a parameter (`"image": "mediagen://files/
    <id>"`). The body streams to storage; its type is found from its bytes, not its headers.
    It expires after FILE_TTL (kept longer while a job that names it may run)."""
    state = request.app.state
    state.rate_limiter.check(owner)
    settings = state.settings
    boundary = upload.boundary_of(request.headers.get("content-type"))
    body = upload.capped(request.stream(), upload_limit(settings.max_file_bytes))
    part = await upload.file_part(body, boundary)
    row = await service.upload(state.storage, settings, part.body, owner, part.filename)
    return json_response(await service.describe(row, state.storage), 201)


@router.get(
    PATH + "/{file_id}",
    response_model=FileInfo,
    responses=_NOT_FOUND,
    summary="Get an input file's details",
)
async def get_file(file_id: uuid.UUID, request: Request, owner: Reader) -> Response:
    row = await service.get_owned(file_id, owner)
    return json_response(await service.describe(row, request.app.state.storage))


@router.delete(
    PATH + "/{file_id}",
    status_code=204,
    responses=_NOT_FOUND,
    summary="Delete an input file",
)
async def delete_file(file_id: uuid.UUID, request: Request, owner: Caller) -> Response:
    """Deletes its bytes and its record at once. A job that already started with it keeps
    what it was given; one still waiting fails."""
    await service.remove(file_id, owner, request.app.state.storage)
    return Response(status_code=204)
