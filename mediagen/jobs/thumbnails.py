"""Gallery thumbnails: a small WebP of each image output, made once, when the output is stored.

A gallery shows many jobs at once; loading each full-size image (1024 px and more) for a card a
few hundred pixels wide wastes the reader's bandwidth and memory. So the worker that stores an
image output also stores a copy at most SIZE pixels on its longer side, under a key derived from
the output's (`key_for`: a retry overwrites it), and records it in the output's record as
`thumbnail_key`. Readers sign its URL as they sign the output's (`url_of`); whatever deletes an
output deletes its thumbnail with it (`keys_of`). Its bytes count toward nothing (neither
`bytes_stored` nor a quota): it is part of its output.

Best effort: without Pillow (the `builtin` extra), for an image already that small, one too
large to decode safely, or one Pillow cannot read, there is none, and readers show the output.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import Mapping
from typing import Any

from mediagen import extras
from mediagen.errors import StorageError
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

SIZE = 256  # pixels, the longer side at most
CONTENT_TYPE = "image/webp"
MAX_PIXELS = 8192 * 8192  # larger images get none (decoding one would take too much memory)
MAX_BYTES = 64 * 1024 * 1024  # larger files too (read back whole to be decoded)


def key_for(output_key: str) -> str:
    """The thumbnail's key, beside its output's: `{stem}.thumb.webp`."""
    stem, dot, _ = output_key.rpartition(".")
    return f"{stem if dot else output_key}.thumb.webp"


def keys_of(output: Mapping[str, Any]) -> list[str]:
    """Every stored object of an output record: the output, and its thumbnail if it has one."""
    thumbnail = output.get("thumbnail_key")
    return [output["key"], thumbnail] if thumbnail else [output["key"]]


async def url_of(output: Mapping[str, Any], storage: Storage) -> str | None:
    """The (signed) URL of an output record's thumbnail; None when it has none."""
    thumbnail = output.get("thumbnail_key")
    return await storage.url_for(thumbnail) if thumbnail else None


@functools.cache
def _pillow() -> bool:
    return extras.installed("builtin")


async def make(
    storage: Storage, key: str, content_type: str, size: int, data: bytes | None = None
) -> str | None:
    """Store the thumbnail of the output stored under `key` (its bytes `data` when at hand,
    else read back) and return its key; None when it gets none (module docstring). Never
    raises for the output's sake: a thumbnail that cannot be stored is logged and left out."""
    if not content_type.startswith("image/") or "svg" in content_type or size > MAX_BYTES:
        return None
    if not _pillow():
        return None
    thumbnail = key_for(key)
    try:
        source = data if data is not None else await storage.read(key)
        small = await asyncio.to_thread(render, source)
        if small is None:
            return None
        await storage.save(thumbnail, small, CONTENT_TYPE)
    except StorageError as exc:
        log.warning("no thumbnail for %s: %s", key, exc)
        return None
    return thumbnail


def render(source: bytes) -> bytes | None:
    """A WebP of `source` at most SIZE pixels on its longer side; None for an image that
    small already, one of more than MAX_PIXELS, or bytes Pillow cannot read."""
    # Pillow is the `builtin` extra's, imported only once a worker has an image to shrink.
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source)) as image:
            width, height = image.size
            if max(width, height) <= SIZE or width * height > MAX_PIXELS:
                return None
            image.draft("RGB", (SIZE, SIZE))  # JPEG: decode at a reduced size
            alpha = "A" in image.getbands() or "transparency" in image.info
            small = image.convert("RGBA" if alpha else "RGB")
            small.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            small.save(out, "WEBP", quality=80)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.warning("no thumbnail: the image cannot be read: %s", exc)
        return None
    return out.getvalue()
