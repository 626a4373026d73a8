"""What a file is, from its first bytes: clients' Content-Type headers and file names lie, and
a file we store is later served from our origin and handed to models, so only bytes count.

An image's header also says how large it is once decoded (`dimensions`, the standard library
only: the API process has no image library): a 20 KB PNG can declare 13000 x 13000 pixels.
"""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncIterator

from mediagen.errors import ImageTooLargeError, UnsupportedMediaTypeError
from mediagen.providers.downloads import CANONICAL

HEAD_BYTES = 64  # enough for every signature below
SIZE_BYTES = 64 * 1024  # how far into an image its size is looked for (JPEG: after metadata)
# Containers whose brand varies with the encoder (an MP4 may be branded `isom`, an AVIF `mif1`):
# one declared as any of them may be any of them.
_ISO_MEDIA = frozenset({"mp4", "m4a", "mov", "avif"})
_MP3_FRAMES = (b"\xff\xfb", b"\xff\xfa", b"\xff\xf3", b"\xff\xf2", b"\xff\xe3", b"\xff\xe2")


def _ext(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or head.startswith(_MP3_FRAMES):
        return "mp3"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand == b"qt  ":
            return "mov"
        if brand in (b"M4A ", b"M4B "):
            return "m4a"
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in head:
        return "webm"
    return None


def sniff(head: bytes) -> tuple[str, str]:
    """(content type, extension) of a file starting with `head`; 415 for any other kind."""
    ext = _ext(head[:HEAD_BYTES])
    if ext is None:
        raise UnsupportedMediaTypeError(
            "unsupported media type: images (png, jpeg, webp, gif, avif), audio (wav, mp3, "
            "ogg, flac, m4a) and video (mp4, webm, mov) are accepted, recognised by content"
        )
    return CANONICAL[ext], ext


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_AVIF_SIZE = re.compile(rb"ispe\x00\x00\x00\x00(.{4})(.{4})", re.DOTALL)


def _jpeg(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _SOF:
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            at += 2
        else:
            at += 2 + struct.unpack(">H", head[at + 2 : at + 4])[0]
    return None


def dimensions(head: bytes, ext: str) -> tuple[int, int] | None:
    """(width, height) an image of type `ext` declares in `head`, or None when the header is
    not within `head` (or `ext` is not an image). Pillow may still find more at decoding
    (a GIF frame beyond its screen): the built-in generator checks again there."""
    size: tuple[int, ...] | None = None
    if ext == "png" and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif ext == "gif" and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif ext == "webp" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            width, height = head[24:27], head[27:30]  # each less one, in 24 bits
            size = (int.from_bytes(width, "little") + 1, int.from_bytes(height, "little") + 1)
        elif chunk == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif chunk == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            size = (width & 0x3FFF, height & 0x3FFF)
    elif ext == "jpg":
        size = _jpeg(head)
    elif ext == "avif":  # the largest image spatial extent ("ispe") of its items
        found = [struct.unpack(">II", m.group(1) + m.group(2)) for m in _AVIF_SIZE.finditer(head)]
        size = max(found, key=lambda s: s[0] * s[1]) if found else None
    return (size[0], size[1]) if size else None


def check_pixels(head: bytes, ext: str, max_pixels: int) -> None:
    """413 (`image_too_large`) when the image's header declares more than `max_pixels`."""
    size = dimensions(head, ext)
    if size is not None and size[0] * size[1] > max_pixels:
        width, height = size
        raise ImageTooLargeError(
            f"the image is {width}x{height} ({width * height:,} pixels), more than the "
            f"{max_pixels:,} accepted (set by MAX_DIMENSION)"
        )


def _adts(head: bytes) -> bool:
    """An AAC stream in ADTS frames (the sync word, layer 0): a type outputs may declare."""
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def check_declared(head: bytes, ext: str) -> None:
    """415 unless a file declared as `ext` starts like one: a server's declared type is a claim,
    and what we store is served from our origin as the type it was stored with."""
    found = _ext(head[:HEAD_BYTES]) or ("aac" if _adts(head) else None)
    if found == ext or (found in _ISO_MEDIA and ext in _ISO_MEDIA):
        return
    looks = f"{CANONICAL[found]} data" if found else "not media we store"
    declared = CANONICAL.get(ext, ext)
    raise UnsupportedMediaTypeError(f"declared {declared}, but its bytes are {looks}")


async def head_of(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first HEAD_BYTES of a stream (all of it when shorter), and the whole stream again."""
    head = b""
    stream = aiter(chunks)
    async for chunk in stream:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break

    async def whole() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in stream:
            yield chunk

    return head, whole()
