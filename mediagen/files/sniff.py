"""What a file is, from its first bytes: clients' Content-Type headers and file names lie, and
a file we store is later served from our origin and handed to models, so only bytes count."""

from __future__ import annotations

from collections.abc import AsyncIterator

from mediagen.errors import UnsupportedMediaTypeError
from mediagen.providers.downloads import CANONICAL

HEAD_BYTES = 64  # enough for every signature below
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
