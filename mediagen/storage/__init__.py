"""Result storage: local filesystem or any S3-compatible store, chosen by `STORAGE_TYPE`."""

from __future__ import annotations

from mediagen.config import Settings
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import S3Storage

__all__ = ["Storage", "create_storage"]


def create_storage(settings: Settings) -> Storage:
    """The backend `settings` ask for. The caller owns it and closes it."""
    if settings.storage_type == "s3":
        return S3Storage.from_settings(settings)
    # Its links are served by the API under `/media`, below the prefix clients reach it under.
    return LocalStorage(settings.local_storage_path, url_prefix=f"{settings.root_path}/media")
