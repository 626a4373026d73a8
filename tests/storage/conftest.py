"""One storage per backend for the contract tests; the S3 server comes from `tests.s3_fixtures`.

Nothing is mocked: every S3 call goes over the wire to moto's server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import S3Storage
from tests.s3_fixtures import BUCKET, CREDENTIALS, make_s3, moto_endpoint, raw_s3

# Imported fixtures serve this directory (a `pytest_plugins` here would break `pytest tests`:
# pytest only accepts it in the rootdir's conftest); the constants are for the tests' imports.
__all__ = ["BUCKET", "CREDENTIALS", "make_s3", "moto_endpoint", "raw_s3"]


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, make_s3: Callable[..., S3Storage]
) -> Storage:
    """The backend under contract test (LocalStorage.close is a no-op, so nothing to clean)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "media")
    return make_s3()
