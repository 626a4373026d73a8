"""A job's logs: what its predictions printed, kept capped, and the new part of each update.

Offsets are UTF-8 byte positions in the job's whole log, the concatenation of its predictions'
logs (a later attempt's, when it had to make a new prediction, after a line `[attempt N]`).
The row keeps only the newest JOB_LOGS_MAX_BYTES of it, cut at a line boundary; when bytes
were dropped its first line says how many (`[... N bytes earlier omitted]`), so the row alone
tells where its text starts, and a live `logs` event can carry the offset of its text: a client
appends events in order and never loses or repeats a byte, even across reconnects.

`Job.logs_base` is where the current prediction's log starts. Providers report a prediction's
log whole (Replicate, the built-in), or its newest part and how many bytes came before it
(Cog, `Prediction.logs_omitted`). Nothing here does I/O: the pipeline folds the result into
the write it makes anyway, so a poll whose log did not grow writes nothing for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mediagen.jobs.models import Job
from mediagen.providers.base import Prediction

_OMITTED = re.compile(r"\A\[\.\.\. (\d+) bytes earlier omitted\]\n")
_MARKER_ROOM = len("[...  bytes earlier omitted]\n") + 20  # any count of bytes fits


def omitted_line(count: int) -> str:
    return f"[... {count} bytes earlier omitted]\n"


def split(stored: str | None) -> tuple[int, str]:
    """(offset of the kept text in the job's log, the kept text) of a stored log."""
    if not stored:
        return 0, ""
    match = _OMITTED.match(stored)
    if match is None:
        return 0, stored
    return int(match.group(1)), stored[match.end() :]


def end_of(stored: str | None) -> int:
    """The length of the job's whole log, in bytes (what was dropped included)."""
    start, kept = split(stored)
    return start + len(kept.encode())


def _char_start(data: bytes, at: int) -> int:
    """The first UTF-8 character boundary at or after `at`."""
    while at < len(data) and data[at] & 0xC0 == 0x80:
        at += 1
    return at


def cap(start: int, text: str, limit: int) -> str:
    """The stored form of `text`, which starts at byte `start` of the job's log: at most
    `limit` bytes, the newest part, cut after a newline (mid-line only if one line is longer
    than the room), with the omitted line first when anything before it is missing."""
    data = text.encode()
    if start == 0 and len(data) <= limit:
        return text
    room = max(limit - _MARKER_ROOM, 0)
    cut = len(data) - room if len(data) > room else 0
    if cut > 0 and data[cut - 1] != 0x0A:
        newline = data.find(b"\n", cut)
        cut = newline + 1 if newline != -1 else _char_start(data, cut)
    return omitted_line(start + cut) + data[cut:].decode()


def tail(text: str, limit: int) -> tuple[int, str]:
    """The newest `limit` bytes of `text` at most (from a character boundary), and how many
    bytes came before them: what a provider may keep of a long log between polls."""
    data = text.encode()
    if len(data) <= limit:
        return 0, text
    cut = _char_start(data, len(data) - limit)
    return cut, data[cut:].decode()


@dataclass(frozen=True)
class Grown:
    """The job's log after an update: what to store, and the text that is new."""

    stored: str
    new: str
    offset: int  # where `new` starts in the job's log


def separator(stored: str | None, attempt: int) -> str:
    """What precedes a new prediction's log in a job that already has one."""
    if not stored:
        return ""
    return ("" if stored.endswith("\n") else "\n") + f"[attempt {attempt}]\n"


def grow(stored: str | None, base: int, logs: str | None, omitted: int, limit: int) -> Grown | None:
    """Fold a prediction's log into the job's. `base`: where that prediction's log starts in
    the job's; `logs`: its log from byte `omitted` on. None when nothing is new.

    A provider's log only grows; what lies beyond the stored end is the new text. Bytes a
    provider dropped before the job saw them leave a gap, which the omitted line accounts for
    (an event's offset is then past what the client has)."""
    if not logs:
        return None
    start, kept = split(stored)
    have = start + len(kept.encode())
    data = logs.encode()
    begins = base + omitted
    ends = begins + len(data)
    if ends <= have:
        return None
    if begins > have:  # a gap: the text between was never seen
        return Grown(cap(begins, logs, limit), logs, begins)
    new = data[have - begins :].decode(errors="ignore")
    if not new:
        return None
    return Grown(cap(start, kept + new, limit), new, have)


def started(stored: str | None, attempt: int, limit: int) -> tuple[Grown | None, int]:
    """A new prediction starts in a job with `stored` logs: the separator to append (if any)
    and the new prediction's base."""
    line = separator(stored, attempt)
    if not line:
        return None, end_of(stored)
    start, kept = split(stored)
    have = start + len(kept.encode())
    grown = Grown(cap(start, kept + line, limit), line, have)
    return grown, have + len(line.encode())


def fold(
    job: Job, prediction: Prediction, attempt: int, limit: int
) -> tuple[dict[str, Any], Grown | None]:
    """What a step that looked at `prediction` writes of the job's logs (columns to add to the
    statement it makes anyway; none when the log did not grow), and the text to announce. A
    prediction the row does not name yet is a new one: its log follows the job's."""
    fields: dict[str, Any] = {}
    stored, base, opened = job.logs, job.logs_base or 0, None
    if prediction.id != job.prediction_id:
        opened, base = started(job.logs, attempt, limit)
        if opened is not None:
            stored = opened.stored
        if base != (job.logs_base or 0):
            fields["logs_base"] = base
    logs = prediction.logs
    if logs and "\x00" in logs:  # a text column holds no NUL (the same text maps the same)
        logs = logs.replace("\x00", "\ufffd")
    grown = grow(stored, base, logs, prediction.logs_omitted, limit)
    if opened is not None:
        if grown is None:
            grown = opened
        elif grown.offset == opened.offset + len(opened.new.encode()):
            grown = Grown(grown.stored, opened.new + grown.new, opened.offset)
    if grown is not None:
        fields["logs"] = grown.stored
    return fields, grown


def unsent(sent_to: int | None, text: str, offset: int) -> tuple[str, int] | None:
    """The part of `text` (at `offset`) past byte `sent_to` of the job's log, which a reader
    has up to there (None: nothing yet), and where that part starts; None if nothing is new."""
    if not text or (sent_to is not None and offset + len(text.encode()) <= sent_to):
        return None
    if sent_to is None or offset >= sent_to:
        return text, offset
    return text.encode()[sent_to - offset :].decode(errors="ignore"), sent_to
