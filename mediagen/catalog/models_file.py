"""The models file (MODELS_FILE), read and checked: per public model name, which provider runs
it: built-in, Replicate (optionally under another name, `ref`), or self-hosted Cog servers
(their endpoints, each with its slots, the deadline after which a started prediction whose
completion never arrived is retried, and optionally the model's input schema: the
`openapi.json` that `cog build` writes, a path relative to the models file, for servers that
publish none; `mediagen.catalog.schemas`). Any entry may set `max_queue_seconds`: how long its
jobs may wait to start, unless the job or its key says; a Replicate or built-in entry may set
`concurrency`: how many of its jobs run at once.

    [models."acme/fox"]
    provider = "cog"
    deadline = 600
    schema = "fox/openapi.json"
    [[models."acme/fox".endpoints]]
    url = "http://gpu-1:5000"
    slots = 1

An endpoint with `discover = "dns"` names a host (a Kubernetes headless Service, say) whose
every address is a server with the entry's slots: the route keeps it in `discover`, and
`mediagen.catalog.discovery` expands it into `endpoints`.

The file is read with the standard library's `tomllib` and checked with pydantic: what is
wrong with it is one line naming the file and the entry (`CatalogError`).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mediagen.catalog.routes import (
    DEFAULT_DEADLINE,
    MAX_SLOTS,
    MODEL_PATTERN,
    CatalogError,
    Endpoint,
    ModelRoute,
    ProviderName,
)
from mediagen.catalog.schemas import read_schema
from mediagen.config import MAX_QUEUE_SECONDS_LIMIT, Settings

# What tells a changed models file: (inode, size, mtime in ns) of the file a path names.
FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of the file `path` names (through symbolic links: a Kubernetes ConfigMap
    swaps its link); None if there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def read_models_file(path: Path) -> tuple[dict[str, Any], FileStamp | None]:
    """The file's TOML, and its stamp as it was before the read (a change while it is read is
    seen next time); CatalogError if it cannot be read or is not TOML."""
    stamp = file_stamp(path)
    try:
        with path.open("rb") as file:
            return tomllib.load(file), stamp
    except OSError as exc:
        raise CatalogError(f"models file {path}: cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"models file {path}: not valid TOML: {exc}") from None


# --- the file, as pydantic checks it ------------------------------------------------------------


class _EndpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=2000)
    slots: int = Field(1, ge=1, le=MAX_SLOTS)
    # "dns": every address the URL's host resolves to is a server of its own.
    discover: Literal["dns"] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{value!r}: a base URL has no query, fragment or credentials")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"{value!r} has spaces or control characters")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return value.rstrip("/")

    @model_validator(mode="after")
    def _names_a_host(self) -> _EndpointEntry:
        if self.discover == "dns" and _is_address(urlsplit(self.url).hostname or ""):
            raise ValueError(f'{self.url!r}: discover = "dns" needs a host name, not an address')
        return self


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


ModelName = Annotated[str, Field(pattern=MODEL_PATTERN, max_length=200)]


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: ProviderName
    endpoints: list[_EndpointEntry] = Field(default_factory=list, max_length=100)
    deadline: float = Field(DEFAULT_DEADLINE, gt=0, le=7 * 24 * 3600)
    ref: ModelName | None = None
    default: bool = False
    max_queue_seconds: int | None = Field(None, ge=1, le=MAX_QUEUE_SECONDS_LIMIT)
    concurrency: int | None = Field(None, ge=1, le=100_000)
    # `schema` in the file: the path of the model's openapi.json, relative to the file.
    schema_path: str | None = Field(None, alias="schema", min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _fits_provider(self) -> _ModelEntry:
        if self.provider == "cog":
            if not self.endpoints:
                raise ValueError("a cog model needs at least one endpoint ([[...endpoints]])")
            urls = [endpoint.url for endpoint in self.endpoints]
            twice = sorted({url for url in urls if urls.count(url) > 1})
            if twice:
                raise ValueError(f"endpoint {twice[0]} is listed twice")
        elif self.endpoints:
            raise ValueError(f"endpoints are for cog models, not {self.provider}")
        elif "deadline" in self.model_fields_set:
            raise ValueError(f"deadline is for cog models, not {self.provider}")
        if self.ref is not None and self.provider != "replicate":
            raise ValueError(f"ref is for replicate models, not {self.provider}")
        if self.concurrency is not None and self.provider == "cog":
            raise ValueError(
                "concurrency is for builtin and replicate models: a cog model's "
                "limit is its endpoints' slots"
            )
        if self.schema_path is not None and self.provider != "cog":
            raise ValueError(f"schema is for cog models, not {self.provider}")
        return self


class _ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[ModelName, _ModelEntry] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_default(self) -> _ModelsFile:
        defaults = [name for name, entry in self.models.items() if entry.default]
        if len(defaults) > 1:
            raise ValueError(f"only one model can be the default: {', '.join(defaults)}")
        seen: dict[str, str] = {}
        for name, entry in self.models.items():
            for endpoint in entry.endpoints:
                other = seen.setdefault(endpoint.url, name)
                if other != name:  # its slots would be counted twice
                    raise ValueError(f"endpoint {endpoint.url} serves both {other} and {name}")
        return self


def routes_in(path: Path, data: Mapping[str, Any], settings: Settings) -> list[ModelRoute]:
    """The routes of a parsed models file; CatalogError if it is not usable. Its `discover`
    entries have no addresses yet (`mediagen.catalog.discovery.expand`)."""
    try:
        checked = _ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_one_line(path, exc)) from None
    found = [
        ModelRoute(
            name=name,
            provider=entry.provider,
            endpoints=tuple(Endpoint(e.url, e.slots) for e in entry.endpoints if not e.discover),
            discover=tuple(Endpoint(e.url, e.slots) for e in entry.endpoints if e.discover),
            deadline=entry.deadline,
            ref=entry.ref,
            default=entry.default,
            max_queue_seconds=entry.max_queue_seconds,
            concurrency=entry.concurrency,
            input_schema=_schema(path, name, entry.schema_path),
        )
        for name, entry in checked.models.items()
    ]
    needs_token = [route.name for route in found if route.provider == "replicate"]
    if needs_token and not settings.replicate_api_token:
        raise CatalogError(
            f'models file {path}: models."{needs_token[0]}" runs on replicate, '
            "which needs REPLICATE_API_TOKEN"
        )
    return found


def _schema(path: Path, name: str, given: str | None) -> dict[str, Any] | None:
    """The input schema a model's `schema` names (relative to the models file at `path`)."""
    if given is None:
        return None
    try:
        return read_schema(path.parent / given)
    except ValueError as exc:
        raise CatalogError(f'models file {path}: models."{name}".schema: {exc}') from None


def _where(loc: tuple[int | str, ...]) -> str:
    """`models."acme/fox".endpoints[0].url` from a pydantic error location."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # the error is about the name itself
            continue
        elif not part.isidentifier():
            out += f'."{part}"' if out else f'"{part}"'
        else:
            out += f".{part}" if out else part
    return out


_MESSAGES = {
    "string_pattern_mismatch": "not a model name (`owner/name`, `owner/name:<64-hex version>` "
    "or a version id, in lower case)",
    "extra_forbidden": "unknown key",
    "model_type": "must be a table",
    "dict_type": "must be a table",
    "too_short": "must not be empty",
}


def _one_line(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = _where(tuple(error["loc"]))
        message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return f"models file {path}: {'; '.join(problems)}"
