"""The models a request may name, and where each one runs.

Without `MODELS_FILE` the catalog is what the settings have always said: every request runs on
the one provider they select (Replicate when `REPLICATE_API_TOKEN` is set, else the built-in
generator), and `ALLOWED_MODELS` (patterns; by default `REPLICATE_DEFAULT_MODEL` alone) is the
allow-list. With it, the file is the allow-list and says, per public model name, which provider
runs it: built-in, Replicate (optionally under another name, `ref`), or self-hosted Cog servers
(their endpoints, each with its slots, the deadline after which a started prediction whose
completion never arrived is retried, and optionally the model's input schema: the
`openapi.json` that `cog build` writes, a path relative to the models file, for servers that
publish none; `mediagen.catalog.schemas`). Any entry may set `max_queue_seconds`: how long its
jobs may wait to start, unless the job or its key says.

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

The file is read with the standard library's `tomllib`, and checked with pydantic: a bad file
stops `mediagen api`, `worker` and `run` with one line naming the file and what is wrong
(`CatalogError`), never at the first request. A running process reads it again when it changes
or on SIGHUP (`mediagen.catalog.watch`): `Catalog.replace` swaps the routes of the one catalog
every holder shares.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import tomllib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mediagen.catalog.schemas import read_schema
from mediagen.config import MAX_QUEUE_SECONDS_LIMIT, Settings, get_settings
from mediagen.errors import MediagenError

# What `model` may look like (the request's rule, and a models file's names and refs):
# `owner/name`, `owner/name:<64-hex version>` or a bare version id.
MODEL_PATTERN = r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(:[0-9a-f]{64})?$|^[0-9a-f]{64}$"
ProviderName = Literal["builtin", "replicate", "cog"]
PROVIDERS: tuple[ProviderName, ...] = ("builtin", "replicate", "cog")
# The built-in generator's own name, wherever this service runs it (the Replicate-compatible
# API addresses every model by name).
BUILTIN_MODEL = "mediagen/builtin"
DEFAULT_DEADLINE = 600.0
MAX_SLOTS = 1000
# Endpoints a reload took away, remembered (by URL) so that a cancel still finds the server a
# running prediction is on; the oldest are forgotten past this many.
RETIRED_KEPT = 1000


@dataclass(frozen=True)
class Endpoint:
    """One Cog server of a model: its base URL (no trailing slash) and its prediction slots."""

    url: str
    slots: int


@dataclass(frozen=True)
class ModelRoute:
    """Where jobs of one public model name run.

    `listed` is False for a route the settings imply rather than the file lists: the default
    without a `default = true` entry, a model that ALLOWED_MODELS admits, or a job's model that
    left the file after the job was accepted. A job on such a route keeps the `model` its
    request gave (None when it gave none), as before models files existed."""

    name: str
    provider: ProviderName
    endpoints: tuple[Endpoint, ...] = ()
    deadline: float = DEFAULT_DEADLINE
    # Cog: the `discover = "dns"` entries (URL with the host name, and slots per address);
    # their addresses are in `endpoints` once resolved (`mediagen.catalog.discovery`).
    discover: tuple[Endpoint, ...] = ()
    ref: str | None = None  # Replicate: the model (or version) asked for instead of `name`
    default: bool = False
    listed: bool = True
    # How long its jobs may wait to start when neither they nor their key say (None: the
    # MAX_QUEUE_SECONDS setting); any provider.
    max_queue_seconds: int | None = None
    # How many of its jobs may run at once (None: the MODEL_CONCURRENCY setting); not for Cog
    # models, whose servers' slots are their limit (mediagen.scheduling).
    concurrency: int | None = None
    # Cog: the model's input schema from the models file (`schema`), read at start-up; None:
    # its servers' own, if they publish one (`mediagen.catalog.listing.InputSchemas`).
    input_schema: dict[str, Any] | None = field(default=None, compare=False, repr=False)


class CatalogError(Exception):
    """The models file cannot be used; the message is one line naming the file and why."""


class ModelNotAllowedError(MediagenError):
    status_code = 422
    code = "model_not_allowed"


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


# --- the catalog ----------------------------------------------------------------------------


# What tells a changed models file: (inode, size, mtime in ns) of the file a path names.
FileStamp = tuple[int, int, int]


@dataclass(frozen=True)
class _Routes:
    """Everything a catalog answers from, replaced as one (`Catalog.replace`)."""

    routes: Mapping[str, ModelRoute]
    fallback: ModelRoute
    patterns: list[str] | None  # ALLOWED_MODELS (settings only)
    source: Path | None
    default: ModelRoute
    stamp: FileStamp | None  # the file's, as it was before it was read


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of the file `path` names (through symbolic links: a Kubernetes ConfigMap
    swaps its link); None if there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


class Catalog:
    """The routes of one process: from the models file (`source`), or from the settings.

    One object per process, shared by everything that routes jobs: a reload changes it in
    place (`replace`), so every holder sees the new routes at once."""

    def __init__(
        self,
        routes: Iterable[ModelRoute],
        fallback: ModelRoute,
        patterns: list[str] | None = None,
        source: Path | None = None,
        stamp: FileStamp | None = None,
    ) -> None:
        by_name = {route.name: route for route in routes}
        default = next((route for route in by_name.values() if route.default), fallback)
        self._state = _Routes(by_name, fallback, patterns, source, default, stamp)
        self._retired: OrderedDict[str, Endpoint] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """No models file: one provider for everything, ALLOWED_MODELS as the allow-list."""
        return cls((), _implied_default(settings), settings.allowed_model_patterns)

    def with_routes(self, routes: Iterable[ModelRoute]) -> Catalog:
        """A new catalog of these routes, from the same source and settings as this one."""
        state = self._state
        return Catalog(routes, state.fallback, state.patterns, state.source, state.stamp)

    def copy(self) -> Catalog:
        """Another catalog with these routes (which later `replace`s of this one leave as
        they are)."""
        copied = Catalog((), self._state.fallback)
        copied._state = self._state
        return copied

    def replace(self, other: Catalog) -> None:
        """Take `other`'s routes, in place and in one step. The endpoints that go are kept in
        `known_endpoints` (their running predictions may still be canceled)."""
        current = {endpoint.url: endpoint for endpoint in self.endpoints()}
        self._state = other._state
        for url in current.keys() - {endpoint.url for endpoint in self.endpoints()}:
            self._retired[url] = current[url]
            self._retired.move_to_end(url)
        for endpoint in self.endpoints():  # back again
            self._retired.pop(endpoint.url, None)
        while len(self._retired) > RETIRED_KEPT:
            self._retired.popitem(last=False)

    @property
    def _routes(self) -> Mapping[str, ModelRoute]:
        return self._state.routes

    @property
    def _fallback(self) -> ModelRoute:
        return self._state.fallback

    @property
    def _patterns(self) -> list[str] | None:
        return self._state.patterns

    @property
    def _default(self) -> ModelRoute:
        return self._state.default

    @property
    def source(self) -> Path | None:
        """The models file this catalog was read from; None: from the settings."""
        return self._state.source

    @property
    def stamp(self) -> FileStamp | None:
        """The models file's stamp when it was read (`file_stamp`)."""
        return self._state.stamp

    @property
    def from_file(self) -> bool:
        return self.source is not None

    def endpoints(self) -> list[Endpoint]:
        """Every Cog endpoint the routes give work to now."""
        return [endpoint for route in self._routes.values() for endpoint in route.endpoints]

    def known_endpoints(self) -> list[Endpoint]:
        """The endpoints of now, then those a reload took away from this process (most recent
        first): where a prediction made before the reload may still run."""
        return [*self.endpoints(), *reversed(self._retired.values())]

    def discovered(self) -> list[Endpoint]:
        """The `discover = "dns"` entries of every route."""
        return [entry for route in self._routes.values() for entry in route.discover]

    @property
    def default(self) -> ModelRoute:
        """What a request that names no model runs on."""
        return self._default

    @property
    def allowed(self) -> list[str]:
        """What the 422 of a refused model lists: the file's names (and the implied default's),
        or the ALLOWED_MODELS patterns."""
        if self._patterns is not None:
            return list(self._patterns)
        return sorted({*self._routes, self._default.name})

    def models(self) -> list[ModelRoute]:
        """Every model a key may name, the default first. Without a models file, names may be
        ALLOWED_MODELS patterns (`acme/*`)."""
        if self._patterns is not None:
            default = self._default
            others = [
                ModelRoute(name=pattern, provider=default.provider, listed=False)
                for pattern in self._patterns
                if pattern != default.name
            ]
            return [default, *others]
        rest = sorted(
            (route for name, route in self._routes.items() if name != self._default.name),
            key=lambda route: route.name,
        )
        return [self._default, *rest]

    def providers(self) -> set[str]:
        """The provider kinds this catalog sends jobs to."""
        return {self._default.provider, *(route.provider for route in self._routes.values())}

    def route(self, model: str | None) -> ModelRoute:
        """The route of a request's `model` (None: the default); ModelNotAllowedError (422)
        for a model this service does not run."""
        if model is None:
            return self._default
        if model == BUILTIN_MODEL and "builtin" in self.providers():
            return self._routes.get(model) or ModelRoute(name=BUILTIN_MODEL, provider="builtin")
        if self._patterns is not None:
            if any(fnmatch.fnmatchcase(model, pattern) for pattern in self._patterns):
                return ModelRoute(name=model, provider=self._fallback.provider, listed=False)
        else:
            found = self._routes.get(model)
            if found is not None:
                return found
            if model == self._default.name:
                return self._default
        allowed = self.allowed
        raise ModelNotAllowedError(
            f"model {model!r} is not allowed here; allowed: {', '.join(allowed)}",
            allowed=allowed,
        )

    def job_model(self, route: ModelRoute, requested: str | None) -> str | None:
        """The `model` a job on `route` records: a listed route's public name, else what the
        request gave (as before models files: None when it named none)."""
        return route.name if route.listed else requested

    def for_job(self, provider: str, model: str | None) -> ModelRoute:
        """The route of an accepted job, from its row (never raises). A model no longer in the
        file (it changed since the job was accepted) keeps the job's provider, with no
        endpoints: the provider says what it can do without them."""
        if model is not None:
            found = self._routes.get(model)
            if found is not None and found.provider == provider:
                return found
        elif self._default.provider == provider:
            return self._default
        return ModelRoute(name=model or self._fallback.name, provider=_kind(provider), listed=False)


def _kind(provider: str) -> ProviderName:
    for kind in PROVIDERS:
        if kind == provider:
            return kind
    return "builtin"  # a row from a future version; the registry refuses it by its own name


def _implied_default(settings: Settings) -> ModelRoute:
    """The default the settings give: REPLICATE_DEFAULT_MODEL, on Replicate when
    REPLICATE_API_TOKEN is set, else on the built-in generator."""
    provider: ProviderName = "replicate" if settings.replicate_api_token else "builtin"
    return ModelRoute(
        name=settings.replicate_default_model, provider=provider, default=True, listed=False
    )


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


def parse(
    path: Path, data: Mapping[str, Any], settings: Settings, stamp: FileStamp | None = None
) -> Catalog:
    """The catalog of a parsed models file; CatalogError if it is not usable. Its `discover`
    entries have no addresses yet (`mediagen.catalog.discovery.expand`)."""
    try:
        checked = _ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_one_line(path, exc)) from None
    routes = [
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
    needs_token = [route.name for route in routes if route.provider == "replicate"]
    if needs_token and not settings.replicate_api_token:
        raise CatalogError(
            f'models file {path}: models."{needs_token[0]}" runs on replicate, '
            "which needs REPLICATE_API_TOKEN"
        )
    return Catalog(routes, _implied_default(settings), source=path, stamp=stamp)


def _schema(path: Path, name: str, given: str | None) -> dict[str, Any] | None:
    """The input schema a model's `schema` names (relative to the models file at `path`)."""
    if given is None:
        return None
    try:
        return read_schema(path.parent / given)
    except ValueError as exc:
        raise CatalogError(f'models file {path}: models."{name}".schema: {exc}') from None


def load_catalog(settings: Settings) -> Catalog:
    """This configuration's catalog: the models file's when MODELS_FILE is set (CatalogError if
    it cannot be read or is not valid), else the settings'."""
    if settings.models_file is None:
        return Catalog.from_settings(settings)
    path = settings.models_file
    if settings.allowed_models.strip():
        raise CatalogError(
            f"models file {path}: ALLOWED_MODELS is set too; with MODELS_FILE the file is the "
            "allow-list: remove ALLOWED_MODELS"
        )
    stamp = file_stamp(path)  # before reading: a change while it is read is seen next time
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise CatalogError(f"models file {path}: cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"models file {path}: not valid TOML: {exc}") from None
    return parse(path, data, settings, stamp)


@lru_cache
def get_catalog() -> Catalog:
    """The process-wide catalog of `get_settings()`, read once."""
    return load_catalog(get_settings())
