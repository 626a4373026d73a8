"""Generation providers, and the registry that gives each job the one its row names.

A job's `provider` column (set at submission from its model's route, `mediagen.catalog`) picks
one of: the built-in generator, Replicate (only when REPLICATE_API_TOKEN is set), or Cog (only
when the models file has Cog models). A process holds one shared instance of each kind it may
need, made when the registry is, so a missing extra or a bad configuration shows at start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, load_catalog
from mediagen.config import Settings
from mediagen.errors import PermanentProviderError
from mediagen.outbound import Outbound
from mediagen.providers.base import Capacity, Provider
from mediagen.providers.builtin.provider import BuiltinProvider
from mediagen.providers.cog.capacity import CogCapacity
from mediagen.providers.cog.provider import CogProvider
from mediagen.providers.replicate.provider import ReplicateProvider
from mediagen.storage.base import Storage

__all__ = ["Provider", "Providers", "create_provider", "create_providers"]

Wrap = Callable[[Provider], Provider]


class Providers:
    """One instance per provider kind, shared by every job of the process; `close()` closes
    them (and the outbound client, when the registry made it)."""

    def __init__(
        self,
        settings: Settings,
        outbound: Outbound | None,
        catalog: Catalog,
        wrap: Wrap | None = None,
        *,
        only: Provider | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._owned = outbound is None
        self.outbound = outbound or Outbound()
        self._wrap = wrap
        self._made: dict[str, Provider] = {}
        self._only = only
        if only is None:  # made now: a missing extra or a bad configuration shows at start-up
            for kind in sorted(catalog.providers()):
                self.get(kind)

    @classmethod
    def only(cls, provider: Provider, settings: Settings) -> Providers:
        """A registry of one provider that runs every job, whatever its row names (what a
        pipeline was before routing; tests and tools build one this way)."""
        return cls(settings, None, Catalog.from_settings(settings), only=provider)

    def get(self, name: str) -> Provider:
        """The shared provider of kind `name`; PermanentProviderError when this process cannot
        run it (so a job that names it fails saying why, instead of retrying for ever)."""
        if self._only is not None:
            return self._only
        made = self._made.get(name)
        if made is None:
            made = self._make(name)
            if self._wrap is not None:
                made = self._wrap(made)
            self._made[name] = made
        return made

    def _make(self, name: str) -> Provider:
        settings = self.settings
        if name == "builtin":
            return BuiltinProvider(
                settings.builtin_latency,
                settings.builtin_fault_injection,
                settings.max_input_pixels,
            )
        if name == "replicate":
            if not settings.replicate_api_token:
                raise PermanentProviderError(
                    "provider replicate is not configured here (REPLICATE_API_TOKEN is unset)"
                )
            return ReplicateProvider(settings, self.outbound)
        if name == "cog":
            return _cog(settings, self.outbound, self.catalog)
        raise PermanentProviderError(f"unknown provider {name!r}")

    def capacity(self, outbox: Outbox, storage: Storage) -> Capacity | None:
        """The slot accounting of the providers that keep one (Cog), on `outbox` (and
        `storage`, where Cog outputs are staged); None when the catalog routes none of them."""
        if "cog" not in self.catalog.providers():
            return None
        return CogCapacity(self.settings, self.catalog, outbox, self.outbound, storage)

    async def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        if self._only is not None:
            made, self._only = [self._only], None
        for provider in made:
            await provider.close()
        if self._owned:
            await self.outbound.close()


def _cog(settings: Settings, outbound: Outbound, catalog: Catalog) -> Provider:
    """The Cog provider, made only where a models file routes models to Cog."""
    if "cog" not in catalog.providers():
        raise PermanentProviderError(
            "provider cog is not configured here (MODELS_FILE has no cog model)"
        )
    return CogProvider(settings, outbound, catalog)


def create_provider(settings: Settings, outbound: Outbound | None = None) -> Provider:
    """The one provider the settings select, without a models file: Replicate when
    REPLICATE_API_TOKEN is set, else the built-in generator. The caller owns and closes it."""
    if settings.replicate_api_token:
        return ReplicateProvider(settings, outbound)
    return BuiltinProvider(
        settings.builtin_latency, settings.builtin_fault_injection, settings.max_input_pixels
    )


def create_providers(
    settings: Settings,
    outbound: Outbound | None = None,
    *,
    catalog: Catalog | None = None,
    wrap: Wrap | None = None,
) -> Providers:
    """The registry for `settings` and its catalog (read from MODELS_FILE unless given), calling
    out through `outbound` (the process's client; one of its own if None). `wrap` decorates
    each provider (the worker counts their calls: MeasuredProvider)."""
    return Providers(settings, outbound, catalog or load_catalog(settings), wrap)
