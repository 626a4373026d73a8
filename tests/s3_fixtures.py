"""A real moto S3 server (HTTP on 127.0.0.1) shared by the session, and S3Storage built on it.

A conftest that needs these fixtures imports them (each such directory starts its own server).
Nothing is mocked: every S3 call goes over the wire to moto's server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiobotocore.session import AioSession
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from mediagen.config import Settings
from mediagen.storage.s3 import S3Storage

BUCKET = "mediagen-test"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _enforce_presign_expiry(app: Any) -> Any:
    """Refuse expired presigned requests as AWS and MinIO do (moto 5.2 ignores X-Amz-Expires)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "X-Amz-Date" in query and "X-Amz-Expires" in query:
            signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            if datetime.now(UTC) > signed + timedelta(seconds=int(query["X-Amz-Expires"][0])):
                body = (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                    b"<Message>Request has expired</Message></Error>"
                )
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return app(environ, start_response)

    return wrapped


class S3Server(ThreadedMotoServer):
    """moto's S3 server over real HTTP, made strict about presigned URL expiry."""

    def _server_entry(self) -> None:
        app = _enforce_presign_expiry(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = S3Server(ip_address="127.0.0.1", port=0, verbose=False)
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
