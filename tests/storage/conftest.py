"""A real moto S3 server (HTTP on 127.0.0.1) shared by the session, and one storage per backend.

Nothing is mocked: every S3 call below goes over the wire to moto's server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import AioSession
from moto.server import ThreadedMotoServer

from mediagen.config import Settings
from mediagen.storage.base import Storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import S3Storage

BUCKET = "mediagen-test"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
async def raw_s3(moto_endpoint: str) -> AsyncIterator[Any]:
    """A plain aiobotocore client, to create the bucket and to look behind the backend's back."""
    session = AioSession()
    async with session.create_client(
        "s3", region_name="us-east-1", endpoint_url=moto_endpoint, **CREDENTIALS
    ) as client:
        await client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
async def make_s3(moto_endpoint: str, raw_s3: Any) -> AsyncIterator[Callable[..., S3Storage]]:
    """Build S3Storage through `from_settings`, as the app does; each one is closed afterwards."""
    made: list[S3Storage] = []

    def make(**overrides: Any) -> S3Storage:
        fields: dict[str, Any] = {
            "storage_type": "s3",
            "s3_bucket_name": BUCKET,
            "s3_endpoint_url": moto_endpoint,
            "s3_region": "us-east-1",
            # Explicit, so MEDIA_BASE_URL & co. in the environment cannot change the tests.
            "media_base_url": "",
            "s3_presign_expiry": 3600,
            # A fresh prefix per storage keeps tests from seeing each other's objects.
            "s3_key_prefix": f"t-{uuid.uuid4().hex[:8]}",
            **CREDENTIALS,
            **overrides,
        }
        made.append(S3Storage.from_settings(Settings(_env_file=None, **fields)))
        return made[-1]

    yield make
    for storage in made:
        await storage.close()


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, make_s3: Callable[..., S3Storage]
) -> Storage:
    """The backend under contract test (LocalStorage.close is a no-op, so nothing to clean)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "media")
    return make_s3()
