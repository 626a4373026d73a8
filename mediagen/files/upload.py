"""The `file` part of a multipart/form-data body, read as it arrives (never whole in memory).

A small parser of our own rather than `request.form()` (which spools the whole body first) or
a dependency: an upload is one part we want and a few small fields around it, and the one rule
that matters is that a part's bytes are passed on as they come, holding back only what could be
the start of the next boundary.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

from mediagen.errors import InvalidInputError, PayloadTooLargeError

MAX_HEADERS = 16 * 1024  # one part's headers
MAX_FIELD = 16 * 1024  # what is kept of a text field beside the file (a name, JSON metadata)
OVERHEAD = 64 * 1024  # what the form may add around the file: boundaries, headers, small fields
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([A-Za-z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def boundary_of(content_type: str | None, field: str = "file") -> bytes:
    """The boundary of a multipart/form-data body, or 422 saying the body is not one (whose
    file goes in the part named `field`)."""
    value = content_type or ""
    match = _BOUNDARY.search(value)
    if not value.lower().startswith("multipart/form-data") or match is None:
        raise InvalidInputError(
            f"upload the file as multipart/form-data, in a field named `{field}`"
        )
    return (match.group(1) or match.group(2)).encode("latin-1")


def capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """`chunks`, failing with 413 once more than `limit` bytes came."""

    async def read() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the file exceeds {limit - OVERHEAD} bytes")
            yield chunk

    return read()


@dataclass
class Part:
    filename: str
    body: AsyncIterator[bytes]
    # The small text fields wanted: those before the file at once, those after it (the first
    # of a name kept) once `body` has been read to its end.
    fields: dict[str, str]


class _Reader:
    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self.chunks = chunks
        self.delimiter = b"\r\n--" + boundary
        self.buf = b"\r\n"  # so that the first boundary looks like every other one

    async def _more(self) -> None:
        try:
            chunk = await anext(self.chunks)
        except StopAsyncIteration:
            raise InvalidInputError("the multipart body ended early") from None
        self.buf += chunk

    async def _until(self, marker: bytes, limit: int) -> bytes:
        """The bytes before `marker` (consumed with it), refusing more than `limit` of them."""
        while (index := self.buf.find(marker)) < 0:
            if len(self.buf) > limit + len(marker):
                raise InvalidInputError("the multipart body is malformed")
            await self._more()
        found, self.buf = self.buf[:index], self.buf[index + len(marker) :]
        return found

    async def body(self) -> AsyncIterator[bytes]:
        """The current part's bytes up to the next boundary, as they come."""
        keep = len(self.delimiter) - 1
        while (index := self.buf.find(self.delimiter)) < 0:
            if len(self.buf) > keep:
                out, self.buf = self.buf[:-keep], self.buf[-keep:]
                yield out
            await self._more()
        out, self.buf = self.buf[:index], self.buf[index + len(self.delimiter) :]
        if out:
            yield out

    async def next_part(self) -> dict[str, str] | None:
        """After a boundary: the next part's headers, or None at the closing one."""
        while len(self.buf) < 2:
            await self._more()
        if self.buf.startswith(b"--"):
            return None
        await self._until(b"\r\n", 1024)  # transport padding after the boundary
        head = await self._until(b"\r\n\r\n", MAX_HEADERS)
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers


def _disposition(value: str) -> dict[str, str]:
    params = {}
    for match in _PARAM.finditer(value):
        raw = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r'\\(["\\])', r"\1", raw)  # as curl escapes
    return params


async def _text(body: AsyncIterator[bytes]) -> str:
    """A small text field's value: its first MAX_FIELD bytes (the rest is read and dropped)."""
    data = b""
    async for chunk in body:
        if len(data) < MAX_FIELD:
            data += chunk[: MAX_FIELD - len(data)]
    return data.decode("utf-8", "replace")


async def file_part(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    field: str = "file",
    wanted: frozenset[str] = frozenset(),
) -> Part:
    """The part named `field`, its body streaming; the `wanted` text fields around it are kept
    (those after it when its body is read to the end: whoever stores the body finds them in
    `Part.fields` once it is done), other parts read and dropped."""
    reader = _Reader(chunks, boundary)
    await reader._until(reader.delimiter, OVERHEAD)  # a preamble, usually empty
    fields: dict[str, str] = {}
    while (headers := await reader.next_part()) is not None:
        params = _disposition(headers.get("content-disposition", ""))
        name = params.get("name", "")
        if name == field:
            filename = unquote(params.get("filename*", "").rpartition("'")[2]) or params.get(
                "filename", ""
            )
            return Part(
                filename.replace("\\", "/").rpartition("/")[2][:255] or "upload",
                _then_fields(reader, wanted, fields),
                fields,
            )
        await _field(reader, name, wanted, fields)
    raise InvalidInputError(f"the form has no field named `{field}`")


async def _field(
    reader: _Reader, name: str, wanted: frozenset[str], fields: dict[str, str]
) -> None:
    """The current part: kept in `fields` if `wanted` (and not seen yet), else read and dropped."""
    if name in wanted and name not in fields:
        fields[name] = await _text(reader.body())
        return
    async for _ in reader.body():
        pass


async def _then_fields(
    reader: _Reader, wanted: frozenset[str], fields: dict[str, str]
) -> AsyncIterator[bytes]:
    """The file's bytes, then the rest of the form read for its `wanted` fields (Replicate's
    JavaScript client sends `metadata` after `content`). The body's capped size bounds it."""
    async for chunk in reader.body():
        yield chunk
    while (headers := await reader.next_part()) is not None:
        params = _disposition(headers.get("content-disposition", ""))
        await _field(reader, params.get("name", ""), wanted, fields)
