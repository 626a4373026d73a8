"""No input; returns one small PNG (the shape of Replicate's "hello world" image models)."""

import tempfile
from pathlib import Path as LocalPath

from cog import BaseRunner, Path
from PIL import Image


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.out = LocalPath(tempfile.mkdtemp(prefix="still-"))

    def run(self) -> Path:
        path = self.out / "still.png"
        Image.new("RGB", (16, 16), (200, 120, 40)).save(path, "PNG")
        return Path(path)
