"""Model routing: which public model names a request may give, and which provider runs each
(`MODELS_FILE`, or the settings without one). See `mediagen.catalog.catalog`."""

from mediagen.catalog.catalog import Catalog, get_catalog, load_catalog
from mediagen.catalog.routes import (
    BUILTIN_MODEL,
    MODEL_PATTERN,
    CatalogError,
    Endpoint,
    ModelNotAllowedError,
    ModelRoute,
    ProviderName,
)

__all__ = [
    "BUILTIN_MODEL",
    "MODEL_PATTERN",
    "Catalog",
    "CatalogError",
    "Endpoint",
    "ModelNotAllowedError",
    "ModelRoute",
    "ProviderName",
    "get_catalog",
    "load_catalog",
]
