"""Replicate's files API at `/v1/files`, over mediagen's input files (`mediagen.files`): the
official clients upload a file given as an input here and put its `urls.get` in the
prediction's input (their default way of sending files).

A file uploaded here is an input file like one uploaded to `/api/v1/files` (same id, limits,
storage quota, type found from its bytes, expiry, owner). A prediction made at `/v1` whose input
is a `urls.get` of this service takes it as that file of the caller's
(`predictions.file_urls`, through `mediagen.files.inputs.by_url`): nothing is fetched."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from mediagen.base_url import service_root
from mediagen.errors import InvalidInputError, NotFoundError
from mediagen.files import service, upload
from mediagen.files.models import InputFile
from mediagen.files.router import upload_limit
from mediagen.jobs.service import json_response
from mediagen.replicate_api import pages, problems
from mediagen.replicate_api.auth import Caller, Reader
from mediagen.replicate_api.predictions import FILES_PATH, PREFIX, file_urls, timestamp
from mediagen.replicate_api.schemas import FilePage, FileUrls, ReplicateFile

router = APIRouter(tags=["replicate"])
PATH = FILES_PATH
FIELD = "content"  # the form field of the file, as Replicate names it
PAGE_SIZE = 100
_LISTED = (
    "id",
    "filename",
    "content_type",
    "size",
    "sha256",
    "md5",
    "metadata",
    "created_at",
    "expires_at",
)
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {
                    FIELD: {"type": "string", "format": "binary"},
                    "filename": {
                        "type": "string",
                        "description": "The name to keep (at most 255 characters), if it "
                        "comes before `content` (by default the name `content` was sent with).",
                    },
                    "type": {"type": "string", "description": "Ignored: found from the bytes."},
                    "metadata": {
                        "type": "string",
                        "description": "A JSON object to keep with the file (at most "
                        f"{upload.MAX_FIELD} bytes).",
                    },
                },
            }
        }
    },
}
_NOT_FOUND = {404: "No unexpired file of yours has this id."}


def file_of(row: InputFile, base: str) -> ReplicateFile:
    return ReplicateFile(
        id=str(row.id),
        name=row.filename,
        content_type=row.content_type,
        size=row.size,
        etag=f'"{row.id.hex}"',
        checksums={"sha256": row.sha256, "md5": row.md5} if row.sha256 and row.md5 else {},
        metadata=row.metadata or {},
        created_at=timestamp(row.created_at) or "",
        expires_at=timestamp(row.expires_at) or "",
        urls=FileUrls(get=f"{file_urls(base)}{row.id}"),
    )


def metadata_of(text: str | None) -> dict[str, Any] | None:
    """The `metadata` field as Replicate's clients send it: a JSON object (422 for anything
    else, and for a NUL character, which Postgres cannot keep)."""
    if text is None or not text.strip():
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidInputError(
            f"`metadata` is not JSON (a JSON object of at most {upload.MAX_FIELD} bytes)"
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError("`metadata` must be a JSON object")
    if b"\\u0000" in orjson.dumps(value):
        raise InvalidInputError("`metadata` must not contain NUL characters")
    return value


@router.post(
    PATH,
    status_code=201,
    response_model=ReplicateFile,
    summary="Upload a file to use as an input",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses=problems.responses(
        400,
        401,
        429,
        described={
            413: "The file exceeds MAX_FILE_BYTES, is an image of more pixels than accepted, "
            "or the key's files would pass its storage quota. (A body announced larger than "
            "the limit is refused before it is read, in mediagen's own error shape.)",
            415: "Not an image, audio or video we accept.",
            422: "Not multipart/form-data with `content`.",
        },
    ),
)
async def create_file(request: Request, caller: Caller) -> Response:
    """Store a file (multipart `content`) for predictions: give its `urls.get` as an input.
    Its type is found from its bytes; it expires after FILE_TTL (kept longer while a
    prediction that names it may run)."""
    state = request.app.state
    state.rate_limiter.check(caller)
    base = service_root(request)  # a refused Host stores nothing
    boundary = upload.boundary_of(request.headers.get("content-type"), FIELD)
    body = upload.capped(request.stream(), upload_limit(state.settings.max_file_bytes))
    part = await upload.file_part(body, boundary, FIELD, frozenset({"filename", "metadata"}))
    name = part.fields.get("filename") or part.filename
    row = await service.upload(
        state.storage,
        state.settings,
        part.body,
        caller,
        name,
        lambda: metadata_of(part.fields.get("metadata")),  # before or after `content`
    )
    return json_response(file_of(row, base).model_dump(mode="json"), 201)


@router.get(
    PATH,
    response_model=FilePage,
    summary="List your files, newest first",
    responses=problems.responses(400, 401, 422, 429),
)
async def list_files(request: Request, caller: Reader, cursor: pages.Cursor = None) -> FilePage:
    """The key's unexpired files (whichever API uploaded them, and those made from
    predictions' inline or fetched inputs): follow `next` (older) or `previous` (newer)."""
    base = service_root(request)
    found = await pages.listed(
        service.unexpired(caller), PAGE_SIZE, _LISTED, cursor, f"{base}{PREFIX}{PATH}"
    )
    results = [file_of(row, base) for row in found.rows]
    return FilePage(next=found.next, previous=found.previous, results=results)


@router.get(
    PATH + "/{file_id}",
    response_model=ReplicateFile,
    summary="Get a file",
    responses=problems.responses(400, 401, 429, described=_NOT_FOUND),
)
async def get_file(file_id: str, request: Request, caller: Reader) -> ReplicateFile:
    base = service_root(request)
    return file_of(await service.get_owned(_file_id(file_id), caller), base)


@router.delete(
    PATH + "/{file_id}",
    status_code=204,
    summary="Delete a file",
    responses=problems.responses(400, 401, 429, described=_NOT_FOUND),
)
async def delete_file(file_id: str, request: Request, caller: Caller) -> Response:
    """Its bytes and its record go at once. A prediction that already started with it keeps
    what it was given; one still waiting fails."""
    await service.remove(_file_id(file_id), caller, request.app.state.storage)
    return Response(status_code=204)


def _file_id(file_id: str) -> uuid.UUID:
    """A file id is an input file's; anything else names no file (404, as Replicate)."""
    try:
        return uuid.UUID(file_id)
    except ValueError:
        raise NotFoundError(f"file {file_id} not found") from None
