"""Response bodies of the files API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class FileInfo(BaseModel):
    id: uuid.UUID
    uri: str = Field(
        description="What a job's parameter gives to use this file: `mediagen://files/<id>`."
    )
    url: str = Field(description="Where the file's bytes can be read (signed, expiring).")
    filename: str = Field(description="The name it was uploaded under.")
    content_type: str = Field(description="Its media type, found from its bytes.")
    size: int = Field(description="In bytes.")
    sha256: str | None = Field(
        description="SHA-256 of its bytes, in hex (null for a file kept before the service "
        "took it)."
    )
    created_at: datetime
    expires_at: datetime = Field(
        description="When it is deleted (FILE_TTL after upload, later while a job uses it)."
    )
