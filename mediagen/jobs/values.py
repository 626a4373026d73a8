"""A prediction's output value: what in it is a file, where each file sits, how big the rest is,
and how a client reads it with each file as the URL of its stored copy.

A model returns one value: a file, a list of files, text, a number, a list, a JSON object, or a
mix of them (a dict with an image and a caption). Files are stored as the job's outputs
(`mediagen.jobs.outputs`); the value is kept in the job's `output` column as the model returned
it with `None` at each file's place, and each stored output remembers its place (`at`, a path
of keys and indexes from the value's root). So a client reads the same shape the model returned,
every file in it as a URL of ours (`shown`).

While a model streams (a `ConcatenateIterator[str]`, any iterator), its output is the list of
what it yielded so far (`streamed`): only values, never a file (files arrive with the end).

Nothing here does I/O or imports the rest of mediagen: providers split what they receive,
the job's readers put the URLs in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from mediagen.errors import OutputTooLargeError

Place = tuple[str | int, ...]  # keys and list indexes from the value's root; () is the root
IsFile = Callable[[str], bool]

__all__ = ["Place", "check", "shown", "size_of", "split", "streamed", "too_large"]


def split(value: Any, is_file: IsFile) -> tuple[Any, list[tuple[Place, str]]]:
    """The value with `None` in place of each string `is_file` calls a file, and those files
    with their places, in order (depth first, lists in order, dicts in their order)."""
    files: list[tuple[Place, str]] = []

    def walk(item: Any, at: Place) -> Any:
        if isinstance(item, str):
            if is_file(item):
                files.append((at, item))
                return None
            return item
        if isinstance(item, list | tuple):
            return [walk(each, (*at, index)) for index, each in enumerate(item)]
        if isinstance(item, dict):
            return {str(key): walk(each, (*at, str(key))) for key, each in item.items()}
        return item

    return walk(value, ()), files


def streamed(value: Any, is_file: IsFile) -> list[Any] | None:
    """What a running prediction has streamed so far: the items its output list starts with,
    up to the first that is or holds a file (files are stored once it ends); None when it
    reports no list."""
    if not isinstance(value, list):
        return None
    chunks = []
    for item in value:
        if split(item, is_file)[1]:
            break
        chunks.append(item)
    return chunks


def size_of(value: Any) -> int:
    """The value's size as stored: its JSON, in bytes."""
    return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


def too_large(size: int, limit: int) -> OutputTooLargeError:
    return OutputTooLargeError(
        f"the model's output is {size} bytes of JSON, more than MAX_OUTPUT_VALUE_BYTES "
        f"({limit}) allows; it was not kept"
    )


def check(value: Any, limit: int) -> int:
    """The value's size; OutputTooLargeError past `limit` bytes (MAX_OUTPUT_VALUE_BYTES)."""
    size = size_of(value)
    if size > limit:
        raise too_large(size, limit)
    return size


def shown(value: Any, outputs: Sequence[Mapping[str, Any]], urls: Sequence[str]) -> Any:
    """The job's output as a client reads it: `value` (the column) with the URL of each
    stored output (`urls`, in the order of `outputs`) at its place. A job whose outputs have
    no places (the built-in generator, jobs from before places were kept) returned a list of
    files: the list of their URLs. Without URLs (not completed) the value is as it is."""
    if not urls:
        return value
    if not any("at" in output for output in outputs):
        return list(urls)
    result = copy.deepcopy(value)
    for output, url in zip(outputs, urls, strict=False):
        at = output.get("at")
        if at is not None:
            result = _put(result, tuple(at), url)
    return result


def _put(value: Any, at: Place, item: Any) -> Any:
    """`value` with `item` at `at` (a place that does not fit the value is left alone)."""
    if not at:
        return item
    head, rest = at[0], at[1:]
    in_list = isinstance(value, list) and isinstance(head, int) and 0 <= head < len(value)
    in_dict = isinstance(value, dict) and isinstance(head, str) and head in value
    if in_list or in_dict:
        value[head] = _put(value[head], rest, item)
    return value
