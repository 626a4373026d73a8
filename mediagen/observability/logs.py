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

import contextlib
import logging
import sys
import threading
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


class _StreamLogger:
    """structlog's output for rendered lines: the root handler's stream, under its lock, so
    lines from both kinds of logger never interleave."""

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self.name = name  # the `logger` field
        self._handler = handler
        self._lock = handler.lock or threading.RLock()

    def msg(self, line: str) -> None:
        with self._lock, contextlib.suppress(ValueError, OSError):  # a closed stream: as
            stream = self._handler.stream  # logging does, never fail the caller over a line
            stream.write(line + "\n")
            stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


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

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_extras, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # basicConfig's, or an earlier call's
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
        logger_factory=lambda name="mediagen", *_: _StreamLogger(handler, name),
        cache_logger_on_first_use=True,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str, **values: Any) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger named `name` (the `logger` field), with `values` bound."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name, **values)
    return logger
