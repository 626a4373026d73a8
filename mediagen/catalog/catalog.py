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

The file is read once per process, with the standard library's `tomllib`, and checked with
pydantic: a bad file stops `mediagen api`, `worker` and `run` with one line naming the file and
what is wrong (`CatalogError`), never at the first request.
"""

from __future__ import annotations

import fnmatch
import tomllib
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


class Catalog:
    """The routes of one process: from the models file (`source`), or from the settings."""

    def __init__(
        self,
        routes: Iterable[ModelRoute],
        fallback: ModelRoute,
        patterns: list[str] | None = None,
        source: Path | None = None,
    ) -> None:
        self._routes: Mapping[str, ModelRoute] = {route.name: route for route in routes}
        self._fallback = fallback
        self._patterns = patterns  # ALLOWED_MODELS (settings only)
        self.source = source
        self._default = next((route for route in self._routes.values() if route.default), fallback)

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """No models file: one provider for everything, ALLOWED_MODELS as the allow-list."""
        return cls((), _implied_default(settings), settings.allowed_model_patterns)

    @property
    def from_file(self) -> bool:
        return self.source is not None

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


def parse(path: Path, data: Mapping[str, Any], settings: Settings) -> Catalog:
    """The catalog of a parsed models file; CatalogError if it is not usable."""
    try:
        checked = _ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_one_line(path, exc)) from None
    routes = [
        ModelRoute(
            name=name,
            provider=entry.provider,
            endpoints=tuple(Endpoint(e.url, e.slots) for e in entry.endpoints),
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
    return Catalog(routes, _implied_default(settings), source=path)


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
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise CatalogError(f"models file {path}: cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"models file {path}: not valid TOML: {exc}") from None
    return parse(path, data, settings)


@lru_cache
def get_catalog() -> Catalog:
    """The process-wide catalog of `get_settings()`, read once."""
    return load_catalog(get_settings())
