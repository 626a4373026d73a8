"""What a route is: a public model name, the provider that runs it and, for Cog, its servers
(`mediagen.catalog.catalog` holds a process's routes; `mediagen.catalog.models_file` reads them
from the models file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
