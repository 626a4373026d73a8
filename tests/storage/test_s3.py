"""S3-only behaviour: failure messages, presigning, prefixes and multipart cleanup, against moto."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiobotocore.session import AioSession

from mediagen.errors import StorageError
from mediagen.storage.s3 import PART_SIZE, S3Storage

from .conftest import BUCKET, CREDENTIALS

MakeS3 = Callable[..., S3Storage]


@pytest.fixture
async def iam_key(moto_endpoint: str) -> AsyncIterator[dict[str, str]]:
    """A real IAM user's key, with moto's IAM authentication switched on for this one test.

    Moto accepts any key by default. Its `/moto-api/reset-auth` endpoint (what
    `moto.core.set_initial_no_auth_action_count` calls in server mode) makes it check signatures
    against IAM users. That switch is process-wide, so it is restored before the next test.
    """
    async with AioSession().create_client(
        "iam", region_name="us-east-1", endpoint_url=moto_endpoint, **CREDENTIALS
    ) as iam:
        user = f"mediagen-{uuid.uuid4().hex[:8]}"
        await iam.create_user(UserName=user)
        statement = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        await iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = (await iam.create_access_key(UserName=user))["AccessKey"]
    async with httpx.AsyncClient(base_url=moto_endpoint) as http:
        response = await http.post("/moto-api/reset-auth", content=b"0")
        previous = response.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        try:
            yield {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            }
        finally:
            await http.post("/moto-api/reset-auth", content=previous.encode())


async def test_valid_iam_key_passes_with_auth_on(make_s3: MakeS3, iam_key: dict[str, str]) -> None:
    """The control for the two tests below: with auth on, a good key still works end to end."""
    storage = make_s3(**iam_key)
    await storage.check()
    key = storage.key_for("auth-ok", 0, "png")
    await storage.save(key, b"signed", "image/png")
    assert await storage.read(key) == b"signed"


async def test_unknown_access_key_is_reported_as_credentials(
    make_s3: MakeS3, iam_key: dict[str, str]
) -> None:
    storage = make_s3(aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="nope")
    with pytest.raises(StorageError, match="S3 credentials were rejected"):
        await storage.check()


async def test_wrong_secret_is_reported_as_credentials(
    make_s3: MakeS3, iam_key: dict[str, str]
) -> None:
    storage = make_s3(aws_access_key_id=iam_key["aws_access_key_id"], aws_secret_access_key="bad")
    with pytest.raises(StorageError, match="S3 credentials were rejected"):
        await storage.check()


async def test_missing_bucket(make_s3: MakeS3) -> None:
    storage = make_s3(s3_bucket_name="no-such-bucket-here")
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket-here' does not exist"):
        await storage.check()
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        await storage.save("k.png", b"x", "image/png")


async def test_unreachable_endpoint_fails_fast(make_s3: MakeS3) -> None:
    with socket.socket() as sock:  # a port that was just free and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = make_s3(s3_endpoint_url=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint http://127.0.0.1:{port}"):
        await storage.check()
    assert time.monotonic() - started < 5


async def test_presigned_url_carries_configured_expiry(make_s3: MakeS3) -> None:
    storage = make_s3(s3_presign_expiry=1)
    query = parse_qs(urlsplit(await storage.url_for("a/b.png")).query)
    assert query["X-Amz-Expires"] == ["1"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


async def test_expired_presigned_url_is_refused(make_s3: MakeS3) -> None:
    """The test server enforces expiry as AWS does (see conftest: moto alone ignores it)."""
    storage = make_s3(s3_presign_expiry=1)
    key = storage.key_for("expiring", 0, "png")
    await storage.save(key, b"short-lived", "image/png")
    url = await storage.url_for(key)
    await asyncio.sleep(2.1)
    async with httpx.AsyncClient() as client:
        refused = await client.get(url)
    assert refused.status_code == 403
    assert b"Request has expired" in refused.content


async def test_media_base_url_mode(make_s3: MakeS3) -> None:
    storage = make_s3(media_base_url="https://cdn.example.com/media/")
    key = storage.key_for("cdn", 0, "png")
    assert await storage.url_for(key) == f"https://cdn.example.com/media/{key}"


async def test_empty_endpoint_means_aws(make_s3: MakeS3) -> None:
    storage = make_s3(s3_endpoint_url="")
    assert storage.endpoint_url is None
    url = await storage.url_for("x.png")  # presigning is local: no request is made
    assert urlsplit(url).hostname == f"{BUCKET}.s3.amazonaws.com"


async def test_key_prefix_applied(make_s3: MakeS3, raw_s3: Any) -> None:
    assert make_s3(s3_key_prefix="").key_for("j1", 0, "png") == "jobs/j1/0.png"
    prefix = f"tenant-{uuid.uuid4().hex[:6]}"
    storage = make_s3(s3_key_prefix=f"/{prefix}/")
    key = storage.key_for("j1", 2, ".PNG")
    assert key == f"{prefix}/jobs/j1/2.png"
    await storage.save(key, b"p", "image/png")
    await storage.check()  # its probe goes under the prefix too, and is deleted
    listed = await raw_s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    assert [o["Key"] for o in listed["Contents"]] == [key]  # the health probe never lingers


async def test_failed_multipart_upload_is_aborted(make_s3: MakeS3, raw_s3: Any) -> None:
    storage = make_s3()
    key = storage.key_for("aborted", 0, "mp4")

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(PART_SIZE + 1024)  # one part is uploaded before the failure
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        await storage.save(key, broken(), "video/mp4")
    uploads = await raw_s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    assert uploads.get("Uploads", []) == []


async def test_close_then_reuse(make_s3: MakeS3) -> None:
    storage = make_s3()
    key = storage.key_for("reopen", 0, "png")
    await storage.save(key, b"before", "image/png")
    await storage.close()
    assert await storage.read(key) == b"before"  # a fresh client is opened lazily
