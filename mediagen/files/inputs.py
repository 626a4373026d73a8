"""Which job parameters are input files, and how they become files the provider can read.

A parameter counts when its value is one string of one of these forms:

- `mediagen://files/<id>`: an uploaded file; at submit it must be the caller's and unexpired
  (else 422), and its expiry is pushed to at least JOB_TIMEOUT from now so it outlives the job;
- `data:<type>;base64,<payload>`: decoded and stored as a file at submit (422 if it does not
  decode, is too large or is not media we accept); the job's parameters then name the file;
- `https://...` (the scheme in any case; written `https://` at submit): fetched by the worker
  when the job starts, through the guarded outbound client (public addresses only unless
  DOWNLOAD_ALLOW_PRIVATE, MAX_FILE_BYTES, typed by its bytes), and stored as a file of the
  job's key. It is recorded at submit already.

A surface may name its uploads by URL as well: `/v1` gives each file a `urls.get`
(`<service root>/v1/files/<id>`), which Replicate's clients send as the input. A submit through
it passes those URL prefixes (`file_urls`), and a value that is one of them and an id is taken
as `mediagen://files/<id>` (written so in the job's parameters): the same upload, of the caller
only, never fetched over HTTP.

Every other value that reads as a URL (`mediagen.files.uris.url_scheme`: `http://`, `ftp:`,
`file:`, `https://user@...`, ...), and any URL inside a list, is refused at submit (422
`input_url_refused`): passed on, a model's server would fetch it from inside its network, and
the built-in generator would ignore it. Other strings pass to the model unchanged.

The job's `input_files` lists every file id it uses. The id of a file made for the job (the last
two forms) derives from the job and the parameter (`made_id`): a retry finds a fetched file
stored instead of fetching it again, and deleting the job deletes the files made for it but not
the caller's uploads, which other jobs may name (`made_for`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from mediagen.base_url import absolute, public_root
from mediagen.config import Settings
from mediagen.db import pool
from mediagen.errors import (
    InvalidInputError,
    OutboundError,
    PayloadTooLargeError,
    PermanentProviderError,
    RefusedInputUrlError,
    StorageQuotaError,
    UnsupportedMediaTypeError,
)
from mediagen.files import service
from mediagen.files.models import InputFile
from mediagen.files.uris import FILE_URI, has_userinfo, https_fetched, names_file, url_scheme
from mediagen.outbound import Outbound, Policy, classify
from mediagen.providers.base import InputRef
from mediagen.providers.downloads import MAX_REDIRECTS, provider_chunks, provider_error
from mediagen.storage.base import Storage

# Accept the files a submit names: only unexpired ones of the caller, and keep them long enough.
_CLAIM = """UPDATE files
SET expires_at = greatest(expires_at, now() + make_interval(secs => $3::float8))
WHERE id = ANY($1::uuid[]) AND api_key_id IS NOT DISTINCT FROM $2 AND expires_at > now()
RETURNING id"""


def named(parameters: Mapping[str, Any]) -> dict[str, str]:
    """The parameters that name input files: name -> value."""
    return {name: value for name, value in parameters.items() if names_file(value)}


_FORMS = (
    "input files are https:// URLs (fetched by the service), mediagen://files/<id> "
    "(POST /api/v1/files) or data:<type>;base64,<data> URIs"
)


def _why(value: str, scheme: str) -> str:
    """Why a URL-like value that names no input file is refused."""
    if has_userinfo(value):
        return "a URL with user information (user@host) is not accepted"
    if scheme == "https":
        return "not a well-formed https:// URL (a host, then no spaces or backslashes)"
    if scheme == "data":
        return "a data: URI must be base64 (data:<type>;base64,<data>)"
    if scheme == "mediagen":
        return "mediagen:// names only uploaded files (mediagen://files/<id>)"
    return f"{scheme}: URLs are not accepted"


def _items(value: object) -> Iterator[tuple[str, object]]:
    """The scalars inside a list (or object) value, each with where it is (`[2]`, `['a'][0]`)."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in reversed(list(item.items())))
        elif where:
            yield where, item


_FILE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def by_url(parameters: dict[str, Any], file_urls: Sequence[str]) -> None:
    """Write each value that is an upload's URL on the submit's surface (one of the prefixes
    `file_urls`, then a file id) as that file's `mediagen://files/<id>`, in place; 422 for one
    that starts like it but names no file."""
    if not file_urls:
        return
    for name, value in parameters.items():
        prefix = next(
            (p for p in file_urls if isinstance(value, str) and value.startswith(p)), None
        )
        if prefix is None:
            continue
        file_id = value[len(prefix) :]
        if not _FILE_ID.fullmatch(file_id):
            raise InvalidInputError(
                f"parameter {name!r}: {value[:200]!r} names no file (`urls.get` of a file)"
            )
        parameters[name] = service.uri_of(file_id.lower())


def screen(parameters: dict[str, Any]) -> None:
    """Refuse (422 `input_url_refused`) every URL-like value that is not an input file in one
    of the three forms, and every URL-like item inside a list or object; an https URL whose
    scheme is written in another case is written `https://` (in place)."""
    for name, value in parameters.items():
        if isinstance(value, str):
            scheme = url_scheme(value)
            if scheme is None or names_file(value):
                continue
            if (url := https_fetched(value)) is not None:
                parameters[name] = url
                continue
            raise RefusedInputUrlError(f"parameter {name!r}: {_why(value, scheme)}; {_FORMS}")
        for where, item in _items(value):
            if url_scheme(item) is not None:
                raise RefusedInputUrlError(
                    f"parameter {name!r}{where}: a URL inside a list is not accepted; give "
                    f"each input file as a parameter of its own ({_FORMS})"
                )


def made_id(job_id: uuid.UUID | str, name: str) -> uuid.UUID:
    """The id of the file made for a job's input `name` (from a `data:` or `https://` value):
    the same for every attempt, and never an upload's id (those are random)."""
    return uuid.uuid5(uuid.UUID(str(job_id)), name)


def made_for(
    job_id: uuid.UUID | str, parameters: Mapping[str, Any], files: Sequence[str]
) -> list[str]:
    """Of a job's `input_files`, those made for it: the ones to delete with the job."""
    made = {str(made_id(job_id, name)) for name in named(parameters)}
    return [file_id for file_id in files if str(file_id) in made]


def _file_id(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.removeprefix(FILE_URI))
    except ValueError:
        raise InvalidInputError(
            f"parameter {name!r}: {value[:80]!r} is not a file id (mediagen://files/<id>)"
        ) from None


def _hold_for(settings: Settings) -> float:
    """How long a file a job names is kept at least: the job's whole possible life."""
    return settings.job_timeout


# --- at submit -----------------------------------------------------------------------------
async def accept(
    parameters: dict[str, Any],
    job_id: uuid.UUID,
    owner: uuid.UUID | None,
    settings: Settings,
    file_urls: Sequence[str] = (),
) -> list[str] | None:
    """Check and prepare the inputs `parameters` name (changing `data:` values, and uploads
    named by their URL on the surface (`file_urls`, `by_url`), in place into the files they
    name); the file ids the job uses, or None when it names none.

    Refuses (422) URL-like values that name no input file (`screen`). One statement for
    uploaded files; no query for a job without inputs."""
    by_url(parameters, file_urls)
    screen(parameters)
    found = named(parameters)
    if not found:
        return None
    files: list[str] = []
    uploaded: dict[uuid.UUID, str] = {}
    try:
        for name, value in found.items():
            if value.startswith(FILE_URI):
                file_id = _file_id(name, value)
                uploaded[file_id] = name
            elif value.startswith("https://"):
                file_id = made_id(job_id, name)
            else:
                file_id = await _store_data(name, value, made_id(job_id, name), owner, settings)
                parameters[name] = service.uri_of(file_id)
            files.append(str(file_id))
        if uploaded:
            claimed = await (await pool()).fetch(
                _CLAIM, list(uploaded), owner, float(_hold_for(settings))
            )
            for missing in set(uploaded) - {row["id"] for row in claimed}:
                raise InvalidInputError(
                    f"parameter {uploaded[missing]!r}: file {missing} not found "
                    "(unknown, expired, or uploaded with another key)"
                )
    except BaseException:
        await discard(job_id, parameters, files)  # a refused submit keeps nothing
        raise
    return list(dict.fromkeys(files))  # one file named twice is one file


async def discard(
    job_id: uuid.UUID, parameters: Mapping[str, Any], files: Sequence[str] | None
) -> None:
    """Delete the files stored for a job that was refused (never written): its `data:` inputs,
    which would otherwise wait in storage for FILE_TTL. Nothing to do for most jobs."""
    if files:
        await service.delete_files(made_for(job_id, parameters, files), service.bound_storage())


async def _store_data(
    name: str, value: str, file_id: uuid.UUID, owner: uuid.UUID | None, settings: Settings
) -> uuid.UUID:
    payload = value[value.index(",") + 1 :]
    if len(payload) > (settings.max_file_bytes + 2) // 3 * 4:
        raise InvalidInputError(
            f"parameter {name!r}: the file exceeds MAX_FILE_BYTES ({settings.max_file_bytes})"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"parameter {name!r}: the data: URI is not valid base64") from None
    try:
        row = await service.store(
            service.bound_storage(),
            data,
            owner=owner,
            filename=name,
            ttl=max(settings.file_ttl, _hold_for(settings)),
            limit=settings.max_file_bytes,
            max_pixels=settings.max_input_pixels,
            file_id=file_id,
            quota=settings.storage_quota_bytes,
        )
    except StorageQuotaError:
        raise  # the caller's quota, not this input, is the problem: 413 as for an upload
    except (UnsupportedMediaTypeError, PayloadTooLargeError) as exc:
        raise InvalidInputError(f"parameter {name!r}: {exc.message}") from None
    return row.id


# --- in the worker -------------------------------------------------------------------------
async def refs(
    job: Any, storage: Storage, settings: Settings, outbound: Outbound
) -> dict[str, InputRef]:
    """The job's inputs as providers take them, fetching `https://` ones not stored yet. No
    query for a job without inputs. Raises provider errors: a fetch that failed, a file gone."""
    if not job.input_files:
        return {}
    found = named(job.parameters)
    wanted = {
        name: made_id(job.id, name) if value.startswith("https://") else _file_id(name, value)
        for name, value in found.items()
        if not value.startswith("data:")
    }
    rows = {row.id: row for row in await InputFile.filter(id__in=list(wanted.values()))}
    inputs: dict[str, InputRef] = {}
    base = public_root(settings)
    for name, file_id in wanted.items():
        row = rows.get(file_id)
        if row is None and found[name].startswith("https://"):
            row = await _fetch(name, found[name], file_id, job, storage, settings, outbound)
        if row is None:
            raise PermanentProviderError(f"input {name!r}: file {file_id} no longer exists")
        url: str | None = await storage.url_for(row.key)
        if url is not None and not url.startswith(("https://", "http://")):
            url = absolute(url, base) if base else None  # a /media path: with PUBLIC_BASE_URL
        inputs[name] = InputRef(
            row.key, row.content_type, row.size, url, functools.partial(storage.read, row.key)
        )
    return inputs


async def _fetch(
    name: str,
    url: str,
    file_id: uuid.UUID,
    job: Any,
    storage: Storage,
    settings: Settings,
    outbound: Outbound,
) -> InputFile:
    """Download an `https://` input into a file of the job's key. 4xx, a refused address, a bad
    type or size: permanent; 5xx, 429, timeouts, a dropped connection: retryable."""
    policy = Policy(
        deadline=settings.download_timeout,
        max_bytes=settings.max_file_bytes,
        allow_private=settings.download_allow_private,
        redirects=MAX_REDIRECTS,
    )
    what = f"input {name!r} ({urlsplit(url).hostname})"
    try:
        async with outbound.open("GET", url, policy) as stream:
            verdict = classify(stream.status)
            if verdict != "ok":
                message = f"{what}: HTTP {stream.status}"
                if verdict == "retry":
                    raise provider_error(
                        OutboundError(message, retryable=True, retry_after=stream.retry_after),
                        message,
                    )
                raise PermanentProviderError(message, http_status=stream.status)
            return await service.store(
                storage,
                provider_chunks(stream),
                owner=job.api_key_id,
                filename=PurePosixPath(urlsplit(url).path).name or name,
                ttl=max(settings.file_ttl, _hold_for(settings)),
                limit=settings.max_file_bytes,
                max_pixels=settings.max_input_pixels,
                file_id=file_id,
                quota=settings.storage_quota_bytes,
            )
    except OutboundError as exc:
        raise provider_error(exc, f"{what}: {exc.reason}") from exc.__cause__ or exc
    except (UnsupportedMediaTypeError, PayloadTooLargeError) as exc:
        raise PermanentProviderError(f"{what}: {exc.message}") from None
