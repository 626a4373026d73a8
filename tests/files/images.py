"""Small real images for input-file tests."""

from __future__ import annotations

import io

from PIL import Image, ImageStat


def png(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    """A PNG of one colour, with a line of another so two of them never compress alike."""
    image = Image.new("RGB", size, color)
    for x in range(size[0]):
        image.putpixel((x, 0), (x % 256, 255 - x % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mean_color(data: bytes, box: tuple[float, float, float, float]) -> tuple[float, ...]:
    """The mean (R, G, B) of `box` (fractions of the width and height) of an encoded image."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    crop = image.crop(
        (int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height))
    )
    return tuple(ImageStat.Stat(crop).mean)
