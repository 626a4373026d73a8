"""What a deployment exposes by default: `/metrics` without a token beyond loopback is said
loudly at start-up, the compose stack requires a metrics token and API keys, and the API's
documentation pages carry a Content-Security-Policy that still lets them render (checked in
Debian's Chromium when it is installed)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.stack import app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOC_PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[_Kept]:
    """Warnings of mediagen's loggers (the application's own log set-up replaces the root's
    handlers, so this one sits on the `mediagen` logger)."""
    kept = _Kept()
    logger = logging.getLogger("mediagen")
    logger.addHandler(kept)
    try:
        yield kept
    finally:
        logger.removeHandler(kept)


@pytest.mark.parametrize(("env", "warned"), [
    ({"API_HOST": "0.0.0.0", "METRICS_TOKEN": ""}, True),
    ({"API_HOST": "::", "METRICS_TOKEN": ""}, True),
    ({"API_HOST": "192.0.2.10", "METRICS_TOKEN": ""}, True),
    ({"API_HOST": "0.0.0.0", "METRICS_TOKEN": "a-token"}, False),
    ({"API_HOST": "0.0.0.0", "METRICS_TOKEN": "", "METRICS_ENABLED": "false"}, False),
    ({"API_HOST": "127.0.0.1", "METRICS_TOKEN": ""}, False),
    ({"API_HOST": "localhost", "METRICS_TOKEN": ""}, False),
])
async def test_open_metrics_beyond_loopback_are_announced_at_start(
    database: str, warnings: _Kept, env: dict[str, str], warned: bool
) -> None:
    async with app(env) as client:
        open_metrics = await client.get("/metrics")
    said = [line for line in warnings.lines if "METRICS_TOKEN" in line]
    assert bool(said) is warned, warnings.lines
    if warned:
        assert open_metrics.status_code == 200  # what the warning is about
        assert env["API_HOST"] in said[0] and "without credentials" in said[0]


def test_the_compose_stack_requires_a_metrics_token_and_api_keys() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    text = (ROOT / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{METRICS_TOKEN(:?[-?][^}]*)?\}", text)
    assert uses and all(use.startswith(":?") for use in uses), uses
    api = compose["services"]["api"]
    assert str(api["environment"]["AUTH_REQUIRED"]) == "true"


def _inline_hashes(html: str, tag: str) -> set[str]:
    blocks = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", html, re.S)
    return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks if b.strip()}


async def test_the_docs_pages_carry_a_content_security_policy(database: str) -> None:
    async with app() as client:
        page = await client.get("/")
        for path in DOC_PAGES:
            answer = await client.get(path)
            assert answer.status_code == 200, path
            policy = answer.headers.get("content-security-policy", "")
            directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";") if d)
            assert directives.get("frame-ancestors") == "'none'", (path, policy)
            assert directives.get("default-src") == "'none'", (path, policy)
            assert "unsafe-inline" not in directives.get("script-src", ""), (path, policy)
            # Its inline scripts, and only its own, are allowed by their hashes.
            for digest in _inline_hashes(answer.text, "script"):
                assert digest in directives["script-src"].split(), (path, policy)
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
    # The page at / keeps its own (stricter) policy: one home decides both.
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
async def test_the_docs_still_render_under_their_policy(api: str) -> None:
    from playwright.async_api import async_playwright

    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page()
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text)
                    if "Content Security Policy" in m.text else None)
            await page.goto(f"{api}/docs")
            await page.locator(".opblock").first.wait_for(timeout=20_000)  # operations listed
            await page.goto(f"{api}/redoc")
            await page.get_by_text("Submit a prompt").first.wait_for(timeout=20_000)
            await page.locator("h2", has_text="Upload an input file").first.wait_for(timeout=20_000)
            # Redoc's "powered by" badge is an image on its CDN: refused like anything from
            # elsewhere (the docs load nothing from another site), and the page works without.
            badge = "Loading the image 'https://cdn.redoc.ly/"
            assert [m for m in refused if not m.startswith(badge)] == []
        finally:
            await browser.close()
    async with httpx.AsyncClient(base_url=api) as http:
        assert (await http.get("/docs")).headers["content-security-policy"]
