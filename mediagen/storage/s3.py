"""S3-compatible storage (AWS, MinIO, R2, moto...) over aiobotocore, so nothing blocks the loop.

One client per instance, opened lazily inside the running event loop (aiohttp sessions are bound
to the loop that creates them) and closed by `close()`. Streams go up as multipart uploads of
8 MiB parts, so a large output never sits in memory whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from mediagen.config import Settings
from mediagen.errors import StorageError
from mediagen.storage.base import Body, measured_save
from mediagen.storage.signing import MediaSigner

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_BAD_CREDENTIALS = {
    "403",  # HEAD responses carry no error body: a bare 403 is all S3 tells us
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccessDenied",
    "InvalidClientTokenId",
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        access_key_id: str = "",
        secret_access_key: str = "",
        endpoint_url: str = "",
        region: str = "us-east-1",
        key_prefix: str = "",
        presign_expiry: int = 3600,
        media_base_url: str = "",
    ) -> None:
        self.bucket = bucket
        self.signer: MediaSigner | None = None  # outputs are presigned; see Storage.signer
        # Empty means "use the default chain" (env, profile, instance role), not "no key".
        self._access_key_id = access_key_id or None
        self._secret_access_key = secret_access_key or None
        self.endpoint_url = endpoint_url or None
        self.region = region
        prefix = key_prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.presign_expiry = presign_expiry
        self.media_base_url = media_base_url.rstrip("/")
        self._session = AioSession()
        self._stack: AsyncExitStack | None = None
        self._data_client: S3Client | None = None
        self._probe_client: S3Client | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            settings.s3_bucket_name,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key.get_secret_value(),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            key_prefix=settings.s3_key_prefix,
            presign_expiry=settings.s3_presign_expiry,
            media_base_url=settings.media_base_url,
        )

    # --- clients ---------------------------------------------------------------------------

    def _config(self, *, probe: bool) -> AioConfig:
        """Path-style for custom endpoints (MinIO/moto have no per-bucket DNS); SigV4 always.
        The probe client fails fast: a health check must answer in seconds, not minutes."""
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path" if self.endpoint_url else "auto"},
        }
        if self.endpoint_url:
            # Many S3 clones reject the CRC checksums botocore now sends by default.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        if probe:
            options.update(
                connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 2}
            )
        else:
            options.update(
                connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5}
            )
        return AioConfig(**options)

    async def _client(self, *, probe: bool = False) -> S3Client:
        """The data (or probe) client, created on first use in the current loop."""
        async with self._lock:
            if self._stack is None:
                self._stack = AsyncExitStack()
            client = self._probe_client if probe else self._data_client
            if client is None:
                client = await self._stack.enter_async_context(
                    self._session.create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self._access_key_id,
                        aws_secret_access_key=self._secret_access_key,
                        config=self._config(probe=probe),
                    )
                )
                if probe:
                    self._probe_client = client
                else:
                    self._data_client = client
            return client

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        self._data_client = self._probe_client = None
        if stack is not None:
            await stack.aclose()

    # --- errors ----------------------------------------------------------------------------

    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def _error(self, exc: Exception, action: str) -> StorageError:
        """One clear sentence per failure kind, so an operator knows what to fix."""
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket" or (code == "404" and action == "check"):
                return StorageError(f"S3 bucket {self.bucket!r} does not exist at {self._where()}")
            if code in _BAD_CREDENTIALS:
                return StorageError(
                    f"S3 credentials were rejected by {self._where()} for bucket "
                    f"{self.bucket!r} while trying to {action} ({code}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
                )
            return StorageError(f"S3 {action} failed on bucket {self.bucket!r}: {exc}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no S3 credentials found ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ConnectionError | HTTPClientError):
            return StorageError(f"cannot reach S3 endpoint {self._where()}: {exc}")
        return StorageError(f"S3 {action} failed on bucket {self.bucket!r}: {exc}")

    # --- Storage ---------------------------------------------------------------------------

    def key_for(self, job_id: str, index: int, ext: str) -> str:
        return f"{self.prefix}jobs/{job_id}/{index}.{ext.lstrip('.').lower()}"

    @measured_save("s3")
    async def save(self, key: str, body: Body, content_type: str) -> int:
        try:
            if isinstance(body, bytes):
                await self._put(key, body, content_type)
                return len(body)
            return await self._save_stream(key, body, content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"write {key!r}") from exc

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        client = await self._client()
        await client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    async def _save_stream(self, key: str, body: AsyncIterator[bytes], content_type: str) -> int:
        """Multipart once a full part has arrived; a stream smaller than that is one PUT."""
        buf = bytearray()
        total = 0
        client = await self._client()
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            async for chunk in body:
                buf += chunk
                total += len(chunk)
                while len(buf) >= PART_SIZE:
                    if upload_id is None:
                        created = await client.create_multipart_upload(
                            Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    part = bytes(buf[:PART_SIZE])
                    del buf[:PART_SIZE]
                    parts.append(await self._part(client, key, upload_id, len(parts) + 1, part))
            if upload_id is None:
                await self._put(key, bytes(buf), content_type)
                return total
            if buf:
                parts.append(await self._part(client, key, upload_id, len(parts) + 1, bytes(buf)))
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            return total
        except BaseException:
            # Also on cancellation: an abandoned upload keeps its parts (and their cost) forever.
            if upload_id is not None:
                with suppress(Exception):
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise

    async def _part(
        self, client: S3Client, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        result = await client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"ETag": result["ETag"], "PartNumber": number}

    async def read(self, key: str) -> bytes:
        try:
            client = await self._client()
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as stream:
                return await stream.read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise StorageError(f"S3 object {key!r} not in bucket {self.bucket!r}") from exc
            raise self._error(exc, f"read {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"read {key!r}") from exc

    async def exists(self, key: str) -> bool:
        try:
            client = await self._client()
            await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._error(exc, f"look up {key!r}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"look up {key!r}") from exc
        return True

    async def delete(self, key: str) -> None:
        try:
            client = await self._client()
            await client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"delete {key!r}") from exc

    async def listing(self, prefix: str, limit: int) -> list[tuple[str, float]]:
        try:
            client = await self._client()
            answer = await client.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix, MaxKeys=max(1, min(limit, 1000))
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"list {prefix!r}") from exc
        return [(o["Key"], o["LastModified"].timestamp()) for o in answer.get("Contents", [])]

    async def url_for(self, key: str) -> str:
        """A public/CDN URL when configured, else a presigned GET (signed locally, no request)."""
        if self.media_base_url:
            return f"{self.media_base_url}/{key}"
        try:
            client = await self._client()
            return await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_expiry,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"sign a URL for {key!r}") from exc

    async def check(self) -> None:
        """Bucket exists and we may write to it, via the fail-fast probe client."""
        probe = f"{self.prefix}.health/{uuid.uuid4().hex}"
        try:
            client = await self._client(probe=True)
            await client.head_bucket(Bucket=self.bucket)
            await client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
            await client.delete_object(Bucket=self.bucket, Key=probe)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "check") from exc
