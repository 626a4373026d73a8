"""Generation providers: Replicate when REPLICATE_API_TOKEN is set, else the built-in generator."""

from __future__ import annotations

from mediagen.config import Settings
from mediagen.outbound import Outbound
from mediagen.providers.base import Provider

__all__ = ["Provider", "create_provider"]


def create_provider(settings: Settings, outbound: Outbound | None = None) -> Provider:
    """The provider `settings` select, calling out through `outbound` (the process's client).
    The caller owns it and closes it."""
    if settings.replicate_api_token:
        from mediagen.providers.replicate import ReplicateProvider

        return ReplicateProvider(settings, outbound)
    from mediagen.providers.builtin import BuiltinProvider

    return BuiltinProvider(settings.builtin_latency, settings.builtin_fault_injection)
