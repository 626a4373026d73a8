"""A small Cog model for mediagen: draws a picture from the prompt with Pillow, on CPU.

It takes the inputs mediagen sends (`prompt` and the job's `parameters`) and reports progress
the way diffusers does (`40%|####      | 2/5`), which mediagen reads from the logs. Same prompt,
size and seed: the same bytes.

Run it without Docker (what mediagen's tests do), from this directory:

    pip install cog==0.23.1 coglet==0.23.1 pillow==13.0.0
    PORT=5000 COG_PREDICT_TYPE_STUB=predict.py:Predictor python -m cog.server.http

or build it into a container: `cog build -t mediagen-example`, then
`docker run -p 5000:5000 mediagen-example`. On a GPU machine, replace the drawing with a
diffusers pipeline where the comments say so (and set `gpu: true` in cog.yaml).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
from pathlib import Path as LocalPath

from cog import BaseRunner, Input, Path
from PIL import Image, ImageDraw

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the model once, when the server starts.

        On a GPU machine (requirements: torch, diffusers, transformers, accelerate):

            import torch
            from diffusers import AutoPipelineForText2Image

            self.pipe = AutoPipelineForText2Image.from_pretrained(
                "stabilityai/sdxl-turbo", torch_dtype=torch.float16, variant="fp16"
            ).to("cuda")
        """
        self.out = LocalPath(tempfile.mkdtemp(prefix="mediagen-example-"))

    def run(
        self,
        prompt: str = Input(description="What to draw"),
        width: int = Input(default=512, ge=64, le=2048, description="A multiple of 8"),
        height: int = Input(default=512, ge=64, le=2048, description="A multiple of 8"),
        seed: int | None = Input(default=None, description="Same seed, same picture"),
        num_outputs: int = Input(default=1, ge=1, le=4),
        num_inference_steps: int = Input(default=4, ge=1, le=150),
        output_format: str = Input(default="png", choices=["png", "jpg", "jpeg", "webp"]),
        guidance_scale: float | None = Input(default=None, ge=0, le=50),
        negative_prompt: str | None = Input(default=None),
        step_seconds: float = Input(
            default=0.0,
            ge=0,
            le=10,
            description="Time each step takes (this example has no "
            "model to wait for; a real one would not have this input)",
        ),
    ) -> list[Path]:
        if seed is None:  # from the prompt, so a prompt alone is reproducible too
            seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        # On a GPU machine, instead of the loop and the drawing below:
        #
        #     generator = torch.Generator("cuda").manual_seed(seed)
        #     images = self.pipe(
        #         prompt, negative_prompt=negative_prompt, width=width, height=height,
        #         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale or 0.0,
        #         num_images_per_prompt=num_outputs, generator=generator,
        #     ).images          # diffusers prints the same progress bar
        for step in range(1, num_inference_steps + 1):
            time.sleep(step_seconds)
            percent = step * 100 // num_inference_steps
            bar = "#" * (percent // 10)
            print(f"{percent:3d}%|{bar:<10}| {step}/{num_inference_steps}", flush=True)
        images = [_draw(prompt, width, height, seed + index) for index in range(num_outputs)]
        paths = []
        for index, image in enumerate(images):
            ext = "jpg" if output_format == "jpeg" else output_format
            path = self.out / f"{seed}-{time.time_ns()}-{index}.{ext}"
            image.save(path, FORMATS[output_format])
            paths.append(Path(path))
        return paths


def _draw(prompt: str, width: int, height: int, seed: int) -> Image.Image:
    """A sky, a sun and hills in colours the seed picks, with the prompt along the bottom."""
    rng = random.Random(seed)
    top = tuple(rng.randrange(40, 200) for _ in range(3))
    bottom = tuple(rng.randrange(100, 256) for _ in range(3))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    radius = min(width, height) // rng.randint(6, 10)
    cx, cy = rng.randrange(radius, width - radius), rng.randrange(radius, height // 2)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 220, 120))
    for layer in range(3):
        shade = tuple(rng.randrange(20, 120) for _ in range(3))
        base = height * (6 + layer) // 10
        points = [(0, height)]
        for x in range(0, width + 32, 32):
            points.append((x, base - rng.randrange(0, height // 6)))
        points.append((width, height))
        draw.polygon(points, fill=shade)
    draw.text((8, height - 16), prompt[:80], fill=(255, 255, 255))
    return image
