"""Secret settings are never shown (a repr, a dump, the health report, a log line), and each can
come from a file: `NAME_FILE`, or a file named after it in SECRETS_DIR (mediagen.secret_files).
A file that cannot be read is one line naming the variable and the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediagen.config import SECRETS, Settings, mask_url
from mediagen.errors import ConfigurationError

VALUES = {
    "database_url": "postgres://mediagen:db-pass-7f3a@db.example:5432/mediagen",
    "redis_url": "redis://:redis-pass-91bc@redis.example:6379/0",
    "redis_sentinel_password": "sentinel-pass-2d4e",
    "replicate_api_token": "r8_token-5e6f",
    "replicate_webhook_secret": "whsec_replicate-8a9b",
    "cog_webhook_secret": "cog-hook-1c2d",
    "cog_upload_token": "cog-upload-3e4f",
    "aws_secret_access_key": "aws-secret-5a6b",
    "media_signing_key": "signing-key-7c8d",
    "webhook_secret": "whsec_clients-9e0f",
    "metrics_token": "metrics-token-4b5c",
}
# What must never be shown: the passwords in the URLs, the other secrets whole.
PASSWORDS = ("db-pass-7f3a", "redis-pass-91bc", *list(VALUES.values())[2:])


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test gives: no variable of the test run's environment, no `.env`."""
    for name in [*SECRETS, "secrets_dir"]:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(f"{name.upper()}_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


def test_every_secret_setting_is_one() -> None:
    assert set(VALUES) == SECRETS


def test_no_secret_in_a_repr_or_a_dump() -> None:
    settings = Settings(_env_file=None, **VALUES)  # type: ignore[arg-type]
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        assert not [p for p in PASSWORDS if p in text], text
    # The URLs still say where they point.
    assert "SecretUrl('postgres://mediagen@db.example:5432/mediagen')" in repr(settings)
    assert "SecretUrl('redis://redis.example:6379/0')" in repr(settings)
    assert settings.replicate_api_token.get_secret_value() == "r8_token-5e6f"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == VALUES["database_url"]


def test_mask_url() -> None:
    assert mask_url("redis://:pw@h:1/0") == "redis://h:1/0"
    assert mask_url("postgres://u:p@w@h/db?x=1") == "postgres://u@h/db?x=1"
    assert mask_url("postgres://u@h/db") == "postgres://u@h/db"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_name_file_in_the_environment_and_in_dot_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "replicate"
    token.write_text("r8_from-a-file\n")
    url = tmp_path / "database"
    url.write_text(VALUES["database_url"])
    monkeypatch.setenv("REPLICATE_API_TOKEN_FILE", str(token))
    # An empty REPLICATE_API_TOKEN (a .env copied from .env-example) does not hide the file.
    (tmp_path / ".env").write_text(f"REPLICATE_API_TOKEN=\nDATABASE_URL_FILE={url}\n")
    settings = Settings()
    assert settings.replicate_api_token.get_secret_value() == "r8_from-a-file"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == VALUES["database_url"]


def test_secrets_dir_by_either_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "WEBHOOK_SECRET").write_text("whsec_k8s")  # a Kubernetes Secret's key
    (secrets / "metrics_token").write_text("from-docker\n")  # a compose secret
    (secrets / "replicate_api_token").write_text("r8_in-the-directory")
    (secrets / "unrelated").write_text("ignored")
    monkeypatch.setenv("SECRETS_DIR", str(secrets))
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_given")  # a value given wins over the file
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.webhook_secret.get_secret_value() == "whsec_k8s"
    assert settings.metrics_token.get_secret_value() == "from-docker"
    assert settings.replicate_api_token.get_secret_value() == "r8_given"
    assert settings.secrets_dir == secrets
    assert not settings.media_signing_key


def test_a_value_and_its_file_both_set_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("x")
    monkeypatch.setenv("METRICS_TOKEN", "y")
    monkeypatch.setenv("METRICS_TOKEN_FILE", str(tmp_path / "token"))
    with pytest.raises(ConfigurationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert str(raised.value) == "METRICS_TOKEN and METRICS_TOKEN_FILE are both set: keep one of them"


@pytest.mark.parametrize("kind", ["missing", "a directory"])
def test_an_unreadable_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "replicate"
    if kind == "a directory":
        path.mkdir()
    monkeypatch.setenv("REPLICATE_API_TOKEN_FILE", str(path))
    with pytest.raises(ConfigurationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = str(raised.value)
    why = "No such file or directory" if kind == "missing" else "Is a directory"
    assert message == f"REPLICATE_API_TOKEN_FILE: cannot read the secret file {path} ({why})"


def test_a_missing_secrets_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(f"SECRETS_DIR={tmp_path / 'nowhere'} cannot be read (")
