"""The streaming multipart reader and the byte sniffer, on their own: boundaries split across
chunks anywhere, fields around the file, and the signatures of each accepted kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mediagen.errors import InvalidInputError, UnsupportedMediaTypeError
from mediagen.files.sniff import sniff
from mediagen.files.upload import MAX_FIELD, boundary_of, file_part

BOUNDARY = b"----formBoundary7MA4YWxk"


def _form(payload: bytes, filename: str = 'photo "1".png') -> bytes:
    quoted = filename.replace('"', '\\"')
    return (
        b"preamble to ignore\r\n"
        + b"--"
        + BOUNDARY
        + b"\r\n"
        + b'Content-Disposition: form-data; name="note"\r\n\r\n'
        + b"--"
        + BOUNDARY[:-1]
        + b"x not a boundary\r\n"
        + b"\r\n--"
        + BOUNDARY
        + b"\r\n"
        + f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'.encode()
        + b"Content-Type: image/png\r\n\r\n"
        + payload
        + b"\r\n--"
        + BOUNDARY
        + b"--\r\n"
    )


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read(data: bytes, size: int) -> tuple[str, bytes]:
    part = await file_part(_chunks(data, size), BOUNDARY)
    return part.filename, b"".join([chunk async for chunk in part.body])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 29, 64, 1000, 1 << 20])
async def test_file_part_whatever_the_chunking(size: int) -> None:
    # Bytes that look like the start of a boundary, and CR LF, inside the file itself.
    payload = b"\x89PNG\r\n\x1a\n" + b"\r\n--" + BOUNDARY[:10] + bytes(range(256)) * 4 + b"\r\n"
    filename, body = await _read(_form(payload), size)
    assert body == payload
    assert filename == 'photo "1".png'


async def test_a_path_in_the_filename_is_dropped() -> None:
    filename, _ = await _read(_form(b"x", filename="C:\\Users\\me\\face.png"), 100)
    assert filename == "face.png"


@pytest.mark.parametrize(
    "data",
    [
        _form(b"abc")[:-30],  # cut before the closing boundary
        b"--"
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--'
        + BOUNDARY
        + b"--\r\n",  # no `file` field
    ],
)
async def test_bad_forms_are_422(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        await _read(data, 16)


def _field(name: str, value: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value + b"\r\n"
    )


async def test_wanted_fields_around_the_file_are_kept() -> None:
    """Replicate's form: `content`, with `filename` and `metadata` fields. One before the file is
    there at once; one after it once the file's body was read to its end; of two with one name,
    the first."""
    data = (
        _field("filename", "chosen ✓.png".encode())
        + _field("type", b"image/png")
        + b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="content"; '
        + b'filename="sent.bin"\r\n\r\nPNGDATA\r\n'
        + _field("filename", b"late.png")
        + _field("other", b"dropped")
        + _field("metadata", b'{"purpose": "test"}')
        + b"--" + BOUNDARY + b"--\r\n"
    )
    wanted = frozenset({"filename", "metadata"})
    part = await file_part(_chunks(data, 5), BOUNDARY, "content", wanted)
    assert part.fields == {"filename": "chosen ✓.png"}  # `type` is not wanted
    assert part.filename == "sent.bin"
    assert b"".join([chunk async for chunk in part.body]) == b"PNGDATA"
    assert part.fields == {"filename": "chosen ✓.png", "metadata": '{"purpose": "test"}'}
    with pytest.raises(InvalidInputError, match="`content`"):  # the `file` field is not it
        await file_part(_chunks(_form(b"x"), 64), BOUNDARY, "content")


async def test_a_wanted_field_is_kept_up_to_max_field_bytes() -> None:
    data = _field("filename", b"x" * (MAX_FIELD + 5000))
    data += _form(b"PNG")[len(b"preamble to ignore\r\n") :]
    part = await file_part(_chunks(data, 100), BOUNDARY, wanted=frozenset({"filename"}))
    assert part.fields == {"filename": "x" * MAX_FIELD}
    assert b"".join([chunk async for chunk in part.body]) == b"PNG"


def test_boundary_of() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of("multipart/form-data; charset=utf-8; boundary=xyz") == b"xyz"
    for header in (None, "application/json", "multipart/form-data"):
        with pytest.raises(InvalidInputError):
            boundary_of(header)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\0\x01\0", "image/gif"),
        (b"RIFF\x24\0\0\0WEBPVP8 ", "image/webp"),
        (b"\0\0\0\x1cftypavif\0\0\0\0", "image/avif"),
        (b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
        (b"ID3\x04\0\0\0\0\0\0", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\0\0", "audio/mpeg"),
        (b"OggS\0\x02\0\0\0\0", "audio/ogg"),
        (b"fLaC\0\0\0\x22", "audio/flac"),
        (b"\0\0\0\x20ftypM4A \0\0\0\0", "audio/mp4"),
        (b"\0\0\0\x20ftypisom\0\0\x02\0", "video/mp4"),
        (b"\0\0\0\x14ftypqt  \0\0\0\0", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
    ],
)
def test_sniff_accepts(head: bytes, kind: str) -> None:
    assert sniff(head)[0] == kind


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.7",
        b"PK\x03\x04",
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska",
        b"RIFF\0\0\0\0AVI LIST",
    ],
)
def test_sniff_refuses(head: bytes) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        sniff(head)
