"""Project-level promises: migrations match the models, `.env-example` lists every setting,
and the API docs are complete and work offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from mediagen.config import Settings
from tests.conftest import TEST_ENV

ROOT = Path(__file__).resolve().parent.parent


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    """`tortoise makemigrations` finds nothing to write (run on a copy: it would write files)."""
    shutil.copytree(ROOT / "mediagen", tmp_path / "mediagen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "tortoise", "-c", "mediagen.db.TORTOISE_ORM", "makemigrations"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path),
             "DATABASE_URL": TEST_ENV["DATABASE_URL"]},
    )
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "mediagen/migrations").glob("0*.py")) == \
        sorted(p.name for p in (ROOT / "mediagen/migrations").glob("0*.py"))


def test_env_example_lists_every_setting() -> None:
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env-example").read_text(),
                            re.MULTILINE))
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - listed == set(), "missing from .env-example"
    assert listed - expected == set(), "in .env-example but not a setting"


async def test_docs_are_complete_and_offline(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert {"/api/v1/generate", "/api/v1/status/{job_id}", "/api/v1/jobs/{job_id}",
            "/api/v1/health"} <= set(paths)
    generate = paths["/api/v1/generate"]["post"]
    assert {"201", "413", "422", "503"} <= set(generate["responses"])
    assert "ErrorResponse" in schema["components"]["schemas"]
    request_schema = schema["components"]["schemas"]["GenerateRequest"]
    assert request_schema["examples"][0]["prompt"] == "A beautiful sunset over mountains"
    assert set(paths["/api/v1/status/{job_id}"]["get"]["responses"]) >= {"200", "404", "422"}

    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert "cdn" not in html.lower()
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets, page
        for asset in assets:
            response = await client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset


def test_compose_file_matches_the_code() -> None:
    """Structure, exposure, pinned images, and secrets without defaults (docker-compose config,
    installed from Debian's packages when missing)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts/check_compose.py")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def test_no_countdown_outlives_the_broker_visibility_timeout() -> None:
    """A message held longer than Redis's visibility timeout is delivered twice: the timeout
    follows the longest countdown anything schedules, whatever the settings."""
    from mediagen.retry import longest_countdown
    from mediagen.worker import make_celery

    for overrides in ({}, {"webhook_retry_delay": 60}, {"retry_max_delay": 86_400}):
        settings = Settings(_env_file=None, **overrides)  # type: ignore[arg-type]
        visibility = make_celery(settings).conf.broker_transport_options["visibility_timeout"]
        assert visibility >= 2 * longest_countdown(settings), overrides
