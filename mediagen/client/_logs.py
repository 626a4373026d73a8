"""Following a job's logs: the new text of each update, and its lines, each delivered once.

Two sources describe the same log: the live stream's `logs` events (`{logs, offset}`: text at a
UTF-8 byte offset of the job's whole log) and, when polling, the job detail's `logs` field (the
newest part only; when bytes were dropped its first line says how many). Both are fed here as
(text, offset), so a reader that switches from one to the other, or reads the same text twice,
gets every byte once and in order.

The omitted line is the server's format (`mediagen.jobs.joblogs.omitted_line`); the client
cannot import the server, so this is a copy, held to the original by tests/client/test_logs.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# on_log(line): one line of the model's log, without its newline, as soon as it is whole.
LogCallback = Callable[[str], object]

_OMITTED = re.compile(r"\A\[\.\.\. (\d+) bytes earlier omitted\]\n")


def split_stored(stored: str | None) -> tuple[str, int]:
    """The text of a job detail's `logs` and its offset in the job's log (the bytes dropped
    before it, which its first line gives)."""
    if not stored:
        return "", 0
    match = _OMITTED.match(stored)
    if match is None:
        return stored, 0
    return stored[match.end() :], int(match.group(1))


class LogFollower:
    """How much of a job's log the reader has, and the line it has not finished yet."""

    def __init__(self) -> None:
        self.end = 0  # bytes of the job's log the reader has
        self._partial = ""

    def feed(self, text: str, offset: int) -> tuple[str, int] | None:
        """The part of `text` (at byte `offset`) the reader has not had, and where it starts;
        None when nothing is new. Past a gap (bytes the server no longer kept) the unfinished
        line is dropped: its end is lost."""
        data = text.encode()
        if not data or offset + len(data) <= self.end:
            return None
        if offset > self.end:
            self._partial = ""
            new, start = text, offset
        else:
            new, start = data[self.end - offset :].decode(errors="ignore"), self.end
        self.end = offset + len(data)
        return new, start

    def lines(self, new: str) -> list[str]:
        """The lines `new` finishes (the rest waits for its newline)."""
        *whole, self._partial = (self._partial + new).split("\n")
        return whole

    def rest(self) -> list[str]:
        """The last line, when the log did not end with a newline."""
        last, self._partial = self._partial, ""
        return [last] if last else []
