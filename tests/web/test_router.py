"""The page's Content-Security-Policy names exactly where outputs load from."""

from __future__ import annotations

from mediagen.config import Settings
from mediagen.web.router import _headers


def _sources(**settings: str) -> dict[str, str]:
    policy = _headers(Settings(**settings))["Content-Security-Policy"]  # type: ignore[arg-type]
    return {part.split()[0]: part for part in policy.split("; ")}


def test_local_storage_loads_outputs_from_this_server_only() -> None:
    policy = _sources(storage_type="local")
    assert policy["img-src"] == "img-src 'self' data: blob:"
    assert policy["media-src"] == "media-src 'self' blob:"
    assert policy["connect-src"] == "connect-src 'self'"


def test_s3_outputs_load_from_the_storage_endpoint() -> None:
    policy = _sources(storage_type="s3", s3_endpoint_url="http://127.0.0.1:9000/bucket")
    assert policy["img-src"] == "img-src 'self' http://127.0.0.1:9000 data: blob:"
    assert policy["media-src"] == "media-src 'self' http://127.0.0.1:9000 blob:"
    assert _sources(storage_type="s3")["img-src"].startswith(
        "img-src 'self' https://*.amazonaws.com")
    cdn = _sources(storage_type="s3", media_base_url="https://cdn.example.com/media")
    assert "https://cdn.example.com " in cdn["img-src"]
    assert cdn["connect-src"] == "connect-src 'self'"  # the API stays on this server
