"""An upload's file name is the client's to choose: control characters in it (a NUL cannot even
be stored) are dropped, and the upload is stored (201) under the name that is left."""

from __future__ import annotations

import httpx
import pytest

from tests.files.images import png

BOUNDARY = "mediagen-names"


def _form(disposition: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; {disposition}\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(("disposition", "stored"), [
    ("filename*=UTF-8''a%00b.png", "ab.png"),
    ("filename*=UTF-8''%0d%0aSet-Cookie%3a%20x.png", "Set-Cookie: x.png"),
    ("filename*=UTF-8''photo%E2%80%AEgnp.exe", "photognp.exe"),  # a right-to-left override
    ("filename*=UTF-8''%00%01%7f", "upload"),
    ('filename="tab\there.png"', "tabhere.png"),
])
async def test_control_characters_are_dropped_from_a_file_name(
    client: httpx.AsyncClient, disposition: str, stored: str
) -> None:
    created = await client.post(
        "/api/v1/files", content=_form(disposition, png((9, 9, 9))),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert created.status_code == 201, created.text
    assert created.json()["filename"] == stored
    again = await client.get(f"/api/v1/files/{created.json()['id']}")
    assert again.json()["filename"] == stored
