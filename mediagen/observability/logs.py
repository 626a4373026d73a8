"""Structured logs: one JSON object per line (or a readable line on a terminal) from every logger
of the process, ours, Celery's and uvicorn's, each with the request and job ids in force.

The codebase logs through the standard library (`logging.getLogger(__name__)`); `configure`
puts one handler on the root logger whose `structlog.stdlib.ProcessorFormatter` turns each
record into the same shape as structlog's own loggers produce: `timestamp` (ISO 8601, UTC),
`level`, `logger`, `event`, then `request_id` and `job_id` from `mediagen.observability.context`
when set, then any `extra=` or bound values. structlog loggers (`get_logger`, e.g. the access
log) render in place and skip building a `LogRecord`: they are the ones on the hot path.

Unless LOG_PROMPTS=true, fields that can hold a prompt, a webhook URL or a credential are masked
(`SENSITIVE`), and the loggers that print URLs or SQL with their values (httpx, Tortoise's
client) are held at WARNING/INFO; call sites never format such values into a message.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from mediagen.config import Settings
from mediagen.observability.context import job_id, request_id

Role = Literal["api", "worker", "cli"]

# Fields masked unless LOG_PROMPTS=true: what a client wrote, and credentials.
SENSITIVE = frozenset(
    {
        "prompt",
        "parameters",
        "webhook",
        "webhook_url",
        "authorization",
        "api_key",
        "token",
        "secret",
        "password",
    }
)
MASK = "[redacted]"
_HEAD = ("timestamp", "level", "logger", "event", "request_id", "job_id")
# Loggers that print request URLs (with query strings) or SQL with its values at INFO/DEBUG.
_TALKATIVE = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "tortoise": logging.INFO}
# LogRecord attributes that are not `extra=` values (plus two that repeat the message).
_RECORD_KEYS = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
        "color_message",  # uvicorn: the message again, with colour codes
        "data",  # Celery: the message's arguments again
    }
)


def level_of(settings: Settings) -> int:
    if settings.debug:
        return logging.DEBUG
    level = logging.getLevelName(settings.log_level.upper())
    return level if isinstance(level, int) else logging.INFO


def wants_json(settings: Settings, stream: TextIO | None = None) -> bool:
    """LOG_FORMAT=json, or auto and `stream` (stderr) is not a terminal."""
    if settings.log_format != "auto":
        return settings.log_format == "json"
    stream = stream or sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


# --- processors ----------------------------------------------------------------------------------
def add_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The request and job ids of the current context (a request, a worker's task step)."""
    if (rid := request_id.get()) is not None:
        event.setdefault("request_id", rid)
    if (jid := job_id.get()) is not None:
        event.setdefault("job_id", jid)
    return event


def redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Mask the fields that may hold a prompt, a webhook URL or a credential."""
    for key in SENSITIVE.intersection(event):
        if event[key] is not None:
            event[key] = MASK
    return event


def _extras(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """`extra=` values of a standard-library record."""
    record: logging.LogRecord | None = event.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and not key.startswith("_"):
                event.setdefault(key, value)
    return event


def _dumps(event: Any, **kw: Any) -> str:
    # The fixed fields first, for a person reading the file.
    head = {key: event.pop(key) for key in _HEAD if key in event}
    return orjson.dumps({**head, **event}, default=kw.get("default", repr)).decode()


def _renderer(json: bool, colors: bool) -> Processor:
    if json:
        return structlog.processors.JSONRenderer(serializer=_dumps)
    # Never print a traceback's local variables: they hold prompts and keys.
    return structlog.dev.ConsoleRenderer(
        colors=colors, exception_formatter=structlog.dev.plain_traceback
    )


# Lines of structlog's loggers (the access log above all) logged on an event loop are gathered
# and written together at most FLUSH_EVERY later: one write for many requests instead of one
# write and flush each (measured: the largest cost of an access line). Anything else, and every
# warning or error, is written at once, after what waits (the order is kept). A process killed
# outright loses at most FLUSH_EVERY of access lines.
FLUSH_EVERY = 0.2
FLUSH_LINES = 512


class _Output:
    """The root handler's stream, shared by both kinds of logger, under the handler's lock."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.handler = handler
        self.lock = handler.lock or threading.RLock()
        self.pending: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_loop: asyncio.AbstractEventLoop | None = None

    def write(self, line: str, urgent: bool = False) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:
            self.pending.append(line)
            if urgent or loop is None or len(self.pending) >= FLUSH_LINES:
                self.drain()
            elif self.timer is None or self.timer_loop is not loop:
                if self.timer is not None:  # a flush due on another loop: take it over
                    self.timer.cancel()
                self.timer, self.timer_loop = loop.call_later(FLUSH_EVERY, self.flush), loop

    def write_all(self, lines: Sequence[str]) -> None:
        """Write `lines` now (after what waits): a batch someone else gathered."""
        with self.lock:
            self.pending.extend(lines)
            self.drain()

    def flush(self) -> None:
        with self.lock:
            self.drain()

    def drain(self) -> None:
        """Write what waits (the caller holds the lock)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.timer_loop = None
        if not self.pending:
            return
        text = "\n".join(self.pending) + "\n"
        self.pending.clear()
        with contextlib.suppress(ValueError, OSError):  # a closed stream: as logging does,
            stream = self.handler.stream  # never fail the caller over a line
            stream.write(text)
            stream.flush()


class _Handler(logging.StreamHandler[TextIO]):
    """The root handler: writes what structlog's loggers left waiting before each record."""

    output: _Output

    def emit(self, record: logging.LogRecord) -> None:
        with self.output.lock:
            self.output.drain()
            super().emit(record)

    def flush(self) -> None:
        if hasattr(self, "output"):
            self.output.flush()
        super().flush()


class _StreamLogger:
    """structlog's output for rendered lines: `_Output`, shared with the root handler."""

    def __init__(self, output: _Output, name: str) -> None:
        self.name = name  # the `logger` field
        self._output = output

    def msg(self, line: str) -> None:
        self._output.write(line)

    def urgent(self, line: str) -> None:
        self._output.write(line, urgent=True)

    log = debug = info = msg
    warn = warning = error = critical = exception = fatal = urgent


def configure(settings: Settings, role: Role, stream: TextIO | None = None) -> None:
    """Route every logger of this process (`role`: api, worker or cli) through structlog.

    Calling it again replaces the handler and the processors (a structlog logger already
    used keeps the ones it was first used with: `cache_logger_on_first_use`)."""
    level = level_of(settings)
    stream = stream or sys.stderr
    json = wants_json(settings, stream)
    shared: list[Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_ids,
    ]
    if not settings.log_prompts:
        shared.append(redact)
    finish: list[Processor] = []
    if json:
        finish.append(structlog.processors.format_exc_info)
    finish.append(_renderer(json, colors=not json and _isatty(stream)))

    handler = _Handler(stream)
    output = handler.output = _Output(handler)
    atexit.register(output.flush)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_extras, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # basicConfig's, or an earlier call's
        old.flush()
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings as lines of their own (logger py.warnings)

    if role == "api":
        # uvicorn's loggers through the root handler too, and its access log off (ours,
        # mediagen.access, has the route template and the request id).
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            server_logger = logging.getLogger(name)
            server_logger.handlers.clear()
            server_logger.propagate = True
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name, floor in _TALKATIVE.items():
        logging.getLogger(name).setLevel(
            logging.NOTSET if settings.log_prompts else max(floor, level)
        )

    structlog.reset_defaults()
    structlog.configure(
        processors=[*shared, *finish],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda name="mediagen", *_: _StreamLogger(output, name),
        cache_logger_on_first_use=True,
    )
    global _current
    _current = (output, json, level, not settings.log_prompts)


_current: tuple[_Output, bool, int, bool] | None = None  # output, JSON, level, masked
# One request, as the API's observer noted it: wall-clock time, request id, job id, client
# address (behind a trusted proxy, the one it forwarded: FORWARDED_ALLOW_IPS), method, route
# template, status, duration in seconds.
Request = tuple[float, str | None, str | None, str | None, str, str, int, float]
AccessLog = Callable[[Sequence[Request]], None]


class _Clock:
    """ISO 8601 UTC timestamps as structlog writes them, the seconds formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def stamp(self, at: float) -> str:
        second = int(at)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((at - second) * 1e6):06d}Z"


class FastLogger:
    """INFO lines for a hot path (a submit's `job created`): in JSON, rendered directly, with
    the same fields, ids and masking as the processor chain gives (which costs a busy API some
    4% of its submits), and written with the batched lines; on a terminal, structlog's line.
    Follows the configuration in force when it logs (it may be made before `configure`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clock = _Clock()
        self._for: object = None
        self._write: Callable[[str, dict[str, Any]], None] | None = None

    def info(self, event: str, **fields: Any) -> None:
        current = _current
        if current is not self._for:
            self._for, self._write = current, self._writer(current)
        if self._write is not None:
            self._write(event, fields)

    def _writer(
        self, current: tuple[_Output, bool, int, bool] | None
    ) -> Callable[[str, dict[str, Any]], None] | None:
        if current is None or current[2] > logging.INFO:
            return None
        output, json, _, masked = current
        if not json:
            logger = get_logger(self.name)
            return lambda event, fields: logger.info(event, **fields)

        def write(event: str, fields: dict[str, Any]) -> None:
            line: dict[str, Any] = {
                "timestamp": self.clock.stamp(time.time()),
                "level": "info",
                "logger": self.name,
                "event": event,
            }
            if (rid := request_id.get()) is not None:
                line["request_id"] = rid
            if (jid := job_id.get()) is not None:
                line["job_id"] = jid
            for key, value in fields.items():
                line[key] = MASK if masked and key in SENSITIVE and value is not None else value
            output.write(orjson.dumps(line, default=repr).decode())

        return write


class _JsonAccessLines:
    """Access lines rendered directly, a batch at a time: the same fields as a structlog line
    (`timestamp`, `level`, `logger`, `event`, ids, then the request's) without the processor
    chain, which in a busy API cost more than the request's own database read. A timestamp's
    seconds are formatted once per second."""

    def __init__(self, output: _Output, logger: str) -> None:
        self.output = output
        self.logger = logger
        self.clock = _Clock()

    def __call__(self, requests: Sequence[Request]) -> None:
        lines = []
        for at, rid, jid, client, method, route, status, seconds in requests:
            line: dict[str, Any] = {
                "timestamp": self.clock.stamp(at),
                "level": "info",
                "logger": self.logger,
                "event": "request",
            }
            if rid is not None:
                line["request_id"] = rid
            if jid is not None:
                line["job_id"] = jid
            line["client"] = client
            line["method"] = method
            line["route"] = route
            line["status"] = status
            line["duration_ms"] = round(seconds * 1000, 3)
            lines.append(orjson.dumps(line).decode())
        self.output.write_all(lines)


def access_log(name: str) -> AccessLog | None:
    """A function that logs a batch of requests as INFO lines of logger `name`; None when INFO
    lines are not logged."""
    if _current is None or _current[2] > logging.INFO:
        return None
    output, json, _, _ = _current
    if json:
        return _JsonAccessLines(output, name)
    logger = get_logger(name)

    def log(requests: Sequence[Request]) -> None:
        for _, rid, jid, client, method, route, status, seconds in requests:
            logger.info(
                "request",
                request_id=rid,
                job_id=jid,
                client=client,
                method=method,
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
            )

    return log


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str, **values: Any) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger named `name` (the `logger` field), with `values` bound."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name, **values)
    return logger
