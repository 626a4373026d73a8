"""The built-in generator's renderer: a real picture drawn from the prompt, deterministic per seed.

Words of the prompt pick the palette and the scene (sky, sun or moon, mountains, water, trees,
stars); the seed places everything; the prompt is written across the bottom. Pure CPU work:
callers run it in a thread so the event loop never waits on it.

An input image (image-to-image) is decoded once per job (`prepare`), and only after its header
said how many pixels it has: a 20 KB PNG can declare 13000 x 13000, a gigabyte once decoded.
Pillow's own decompression-bomb warning counts as an error here.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import warnings

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

RGB = tuple[int, int, int]

# Set once, at import (a filter set around each decode would race between render threads).
warnings.simplefilter("error", Image.DecompressionBombWarning)

# keyword -> (sky top, sky bottom, ground)
PALETTES: dict[str, tuple[RGB, RGB, RGB]] = {
    "sunset": ((38, 24, 84), (250, 140, 60), (60, 30, 50)),
    "sunrise": ((90, 120, 200), (255, 190, 120), (70, 60, 60)),
    "night": ((5, 8, 30), (30, 40, 90), (10, 15, 30)),
    "ocean": ((40, 110, 190), (150, 210, 240), (20, 70, 130)),
    "sea": ((40, 110, 190), (150, 210, 240), (20, 70, 130)),
    "forest": ((90, 150, 120), (200, 230, 190), (25, 70, 35)),
    "desert": ((120, 170, 230), (250, 220, 170), (210, 160, 90)),
    "snow": ((170, 190, 220), (240, 245, 255), (230, 235, 245)),
    "fire": ((60, 10, 10), (255, 120, 20), (90, 20, 10)),
    "city": ((30, 30, 60), (120, 110, 160), (40, 40, 50)),
    "space": ((0, 0, 0), (20, 10, 50), (10, 5, 20)),
}
COLOR_WORDS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 210, 40),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (130, 60, 180),
    "pink": (240, 120, 170),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gold": (212, 175, 55),
    "silver": (190, 190, 200),
    "teal": (0, 128, 128),
}
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt.lower())


def _palette(words: list[str], rng: random.Random) -> tuple[RGB, RGB, RGB]:
    for word in words:
        if word in PALETTES:
            return PALETTES[word]
        if word.rstrip("s") in PALETTES:
            return PALETTES[word.rstrip("s")]

    def rand() -> RGB:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    return rand(), rand(), rand()


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _sky(width: int, height: int, top: RGB, bottom: RGB) -> Image.Image:
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.composite(
        Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient
    )


def render(
    prompt: str,
    width: int,
    height: int,
    seed: int | None = None,
    steps: int = 50,
    output_format: str = "png",
    fitted: Image.Image | None = None,
    strength: float = 1.0,
) -> bytes:
    """Encode an image of `width`x`height` for `prompt`; same inputs, same bytes. With a
    `fitted` input image (`prepare`d to this size), the drawing is blended over it at
    `strength`: 0 keeps the input, 1 is the drawing alone."""
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    rng = random.Random(f"{seed}:{prompt}")
    words = _words(prompt)
    top, bottom, ground = _palette(words, rng)
    accents = [COLOR_WORDS[w] for w in words if w in COLOR_WORDS]
    image = _sky(width, height, top, bottom)
    draw = ImageDraw.Draw(image, "RGBA")
    horizon = int(height * rng.uniform(0.55, 0.75))
    unit = min(width, height)

    if {"night", "space", "star", "stars", "galaxy"} & set(words):
        for _ in range(int(width * height / 4000)):
            x, y, r = rng.randrange(width), rng.randrange(horizon), rng.choice((1, 1, 2))
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=(255, 255, 240, rng.randrange(120, 255))
            )
    body = "moon" if {"night", "moon"} & set(words) else "sun"
    cx, cy = rng.uniform(0.2, 0.8) * width, horizon - rng.uniform(0.1, 0.35) * height
    radius = unit * rng.uniform(0.06, 0.12)
    body_color = (
        (235, 235, 210, 255) if body == "moon" else (*_mix(bottom, (255, 240, 150), 0.7), 255)
    )
    for glow in range(6, 0, -1):
        g = radius * (1 + glow * 0.25)
        draw.ellipse((cx - g, cy - g, cx + g, cy + g), fill=(*body_color[:3], 18))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=body_color)

    # Mountain ranges: more layers, and more ridge detail, with more inference steps.
    layers = 3 if {"mountain", "mountains", "hills", "peaks"} & set(words) else 1
    detail = max(4, min(40, steps // 3))
    for layer in range(layers):
        shade = _mix(ground, bottom, 0.5 - layer * 0.2)
        base = horizon + layer * height // 20
        points: list[tuple[float, float]] = [(0, height), (0, base)]
        for i in range(1, detail + 1):
            ridge_x = width * i / detail
            peak = rng.uniform(0.05, 0.35 if layers > 1 else 0.08) * height
            points.append((ridge_x, base - peak))
        points.append((width, height))
        draw.polygon(points, fill=shade)

    if {"ocean", "sea", "lake", "water", "river", "beach"} & set(words):
        water_top = int(height * 0.8)
        draw.rectangle((0, water_top, width, height), fill=(*_mix(top, bottom, 0.6), 230))
        for _ in range(40):
            y = rng.randrange(water_top, height)
            x = rng.randrange(width)
            draw.line(
                (x, y, x + unit // 15, y), fill=(255, 255, 255, 90), width=max(1, unit // 300)
            )
    if {"forest", "tree", "trees", "woods"} & set(words):
        for _ in range(max(6, width // 40)):
            x, tree_h = rng.randrange(width), rng.uniform(0.08, 0.2) * height
            base_y = rng.uniform(horizon, height)
            draw.polygon(
                [(x, base_y - tree_h), (x - tree_h / 4, base_y), (x + tree_h / 4, base_y)],
                fill=(*_mix(ground, (10, 40, 15), 0.5), 255),
            )
    for color in accents:  # colour words become shapes of that colour
        for _ in range(3):
            ax, ay = rng.randrange(width), rng.randrange(height)
            ar = unit * rng.uniform(0.03, 0.08)
            draw.ellipse((ax - ar, ay - ar, ax + ar, ay + ar), fill=(*color, 200))

    image = image.filter(ImageFilter.SMOOTH)
    if fitted is not None:
        image = Image.blend(fitted, image, strength)
    _caption(image, prompt, unit)
    buffer = io.BytesIO()
    fmt = FORMATS[output_format]
    image.save(buffer, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return buffer.getvalue()


class TooManyPixels(Exception):
    """An input image that would decode to more pixels than accepted; says how many."""


def prepare(source: bytes, size: tuple[int, int], max_pixels: int) -> Image.Image:
    """The input image `source` scaled and cropped to `size` (RGB), decoded once for all of a
    job's outputs. TooManyPixels when its header says more than `max_pixels` (or than Pillow's
    own bomb threshold), before anything is decoded; ValueError when it cannot be read."""
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(io.BytesIO(source)) as opened:
            width, height = opened.size
            if width * height > limit:
                raise TooManyPixels(
                    f"the input image is {width}x{height} ({width * height:,} pixels), more "
                    f"than the {limit:,} accepted"
                )
            opened.draft("RGB", size)  # JPEG: decode at a reduced size when it can
            # A 1-bit image is fitted as greyscale: a third of the memory of RGB, same result.
            decoded = opened.convert("L" if opened.mode == "1" else "RGB")
            base = ImageOps.fit(decoded, size, Image.Resampling.LANCZOS).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"the input image has too many pixels: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"the input image cannot be read: {exc}") from exc
    return base


def _caption(image: Image.Image, prompt: str, unit: int) -> None:
    draw = ImageDraw.Draw(image, "RGBA")
    size = max(10, unit // 28)
    font = ImageFont.load_default(size=size)
    text = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    width, height = image.size
    box = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = box[2] - box[0], box[3] - box[1]
    x, y = max(4, (width - text_w) // 2), height - text_h - size
    draw.rectangle((0, y - size // 2, width, height), fill=(0, 0, 0, 110))
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 235))
