"""The models a request may name, and where each one runs.

Without `MODELS_FILE` the catalog is what the settings have always said: every request runs on
the one provider they select (Replicate when `REPLICATE_API_TOKEN` is set, else the built-in
generator), and `ALLOWED_MODELS` (patterns; by default `REPLICATE_DEFAULT_MODEL` alone) is the
allow-list. With it, the file is the allow-list and says, per public model name, where it runs
(`mediagen.catalog.models_file`): a bad file stops `mediagen api`, `worker` and `run` with one
line naming the file and what is wrong (`CatalogError`), never at the first request. A running
process reads it again when it changes or on SIGHUP (`mediagen.catalog.watch`):
`Catalog.replace` swaps the routes of the one catalog every holder shares.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mediagen.catalog.models_file import FileStamp, read_models_file, routes_in
from mediagen.catalog.routes import (
    BUILTIN_MODEL,
    PROVIDERS,
    CatalogError,
    Endpoint,
    ModelNotAllowedError,
    ModelRoute,
    ProviderName,
)
from mediagen.config import Settings, get_settings

# Endpoints a reload took away, remembered (by URL) so that a cancel still finds the server a
# running prediction is on; the oldest are forgotten past this many.
RETIRED_KEPT = 1000


@dataclass(frozen=True)
class _Routes:
    """Everything a catalog answers from, replaced as one (`Catalog.replace`)."""

    routes: Mapping[str, ModelRoute]
    fallback: ModelRoute
    patterns: list[str] | None  # ALLOWED_MODELS (settings only)
    source: Path | None
    default: ModelRoute
    stamp: FileStamp | None  # the file's, as it was before it was read


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


def parse(
    path: Path, data: Mapping[str, Any], settings: Settings, stamp: FileStamp | None = None
) -> Catalog:
    """The catalog of a parsed models file (`mediagen.catalog.models_file`)."""
    routes = routes_in(path, data, settings)
    return Catalog(routes, _implied_default(settings), source=path, stamp=stamp)


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
    data, stamp = read_models_file(path)
    return parse(path, data, settings, stamp)


@lru_cache
def get_catalog() -> Catalog:
    """The process-wide catalog of `get_settings()`, read once."""
    return load_catalog(get_settings())
