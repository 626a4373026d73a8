"""A required input and typed ones, run asynchronously (`async def run`); returns `count` small
PNGs, each of the colour `mode` and `shade` pick. It says in its log what it was given."""

import tempfile
from pathlib import Path as LocalPath

from cog import BaseRunner, Input, Path
from PIL import Image


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.out = LocalPath(tempfile.mkdtemp(prefix="typed-"))

    async def run(
        self,
        text: str = Input(description="Written in the log"),
        count: int = Input(default=1, ge=1, le=3, description="How many pictures"),
        mode: str = Input(default="plain", choices=["plain", "loud"]),
        shade: float = Input(default=0.5, ge=0, le=1),
        seed: int | None = Input(default=None),
    ) -> list[Path]:
        print(f"given text={text!r} count={count} mode={mode} shade={shade} seed={seed}",
              flush=True)
        level = int(shade * 255)
        colour = (level, 0, 0) if mode == "loud" else (level, level, level)
        paths = []
        for index in range(count):
            path = self.out / f"{text[:20].replace('/', '_')}-{index}.png"
            Image.new("RGB", (8 + index, 8), colour).save(path, "PNG")
            paths.append(Path(path))
        return paths
