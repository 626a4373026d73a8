"""Cog predictors of every output shape, for tests/providers/test_cog_outputs.py: one Cog server
per class (`COG_PREDICT_TYPE_STUB=outputs.py:<class>`), run from this directory.

Besides their own inputs (`text`, `delay`, `count`, ...) each takes a `prompt` (a job made
through `/api/v1/generate` sends its prompt to a model whose schema is not known) and a `seed`.
"""

import asyncio
import tempfile
import time
from pathlib import Path as LocalPath

from cog import (
    AsyncConcatenateIterator,
    BaseModel,
    BasePredictor,
    BaseRunner,
    ConcatenateIterator,
    Path,
)
from PIL import Image

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]


def _words(text: str) -> list[str]:
    """`text` as chunks a token stream would yield: each word with the space before it."""
    words = text.split(" ")
    return [words[0], *(f" {word}" for word in words[1:])]


def _picture(folder: LocalPath, index: int, seed: int | None) -> Path:
    path = folder / f"out-{index}-{time.monotonic_ns()}.png"
    color = COLORS[(index + (seed or 0)) % len(COLORS)]
    Image.new("RGB", (16 + index, 16), color).save(path, "PNG")
    return Path(path)


class TextStream(BasePredictor):
    """Text as a stream of chunks (`ConcatenateIterator[str]`), written the older way
    (`BasePredictor.predict`): a chunk every `delay` seconds, each `repeat` times its word."""

    def predict(
        self,
        text: str = "hello streaming world",
        delay: float = 0.0,
        repeat: int = 1,
        prompt: str = "",
        seed: int | None = None,
    ) -> ConcatenateIterator[str]:
        for chunk in _words(text):
            time.sleep(delay)
            print(f"yielding {chunk!r}", flush=True)
            yield chunk * repeat


class AsyncStream(BaseRunner):
    """The same stream from an async generator (`AsyncConcatenateIterator[str]`)."""

    async def run(
        self,
        text: str = "hello async world",
        delay: float = 0.0,
        prompt: str = "",
        seed: int | None = None,
    ) -> AsyncConcatenateIterator[str]:
        for chunk in _words(text):
            await asyncio.sleep(delay)
            yield chunk


class Files(BaseRunner):
    """A list of `count` small PNG files (`list[Path]`)."""

    def setup(self) -> None:
        self.out = LocalPath(tempfile.mkdtemp(prefix="cog-files-"))

    def run(
        self,
        count: int = 2,
        prompt: str = "",
        seed: int | None = None,
    ) -> list[Path]:
        return [_picture(self.out, index, seed) for index in range(count)]


class Output(BaseModel):
    text: str
    words: list[str]
    score: float
    image: Path


class Json(BaseRunner):
    """A JSON object (a `BaseModel`) with text, a list, a number and a file in it."""

    def setup(self) -> None:
        self.out = LocalPath(tempfile.mkdtemp(prefix="cog-json-"))

    def run(
        self,
        text: str = "a red fox",
        prompt: str = "",
        seed: int | None = None,
    ) -> Output:
        return Output(
            text=text.upper(),
            words=text.split(" "),
            score=len(text) / 4,
            image=_picture(self.out, 0, seed),
        )


class Number(BaseRunner):
    """A number: a quarter of the length of `text`."""

    def run(
        self,
        text: str = "abcdef",
        prompt: str = "",
        seed: int | None = None,
    ) -> float:
        return len(text) / 4
