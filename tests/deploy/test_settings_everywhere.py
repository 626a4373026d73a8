"""Every environment variable the deployment files give a container is a mediagen setting
(mediagen/config.py) or one of the documented others below; and the settings a deployment
must set appear in each of them (Kubernetes: the ConfigMap, the containers' env and the Secret's
keys as secrets.env-example lists them; docker-compose*.yml: the containers' environment).
The compose stack gives its containers every setting of .env (env_file), the build context
leaves a checkout's private files out (.dockerignore)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mediagen.config import SECRETS, Settings
from tests.deploy.kit import EXAMPLE, by_kind, pod_specs, rendered, tool
from tests.support import ROOT

SETTINGS = {name.upper() for name in Settings.model_fields}
# Variables that are not mediagen settings, and who reads them.
NOT_SETTINGS = {
    "POSTGRES_PASSWORD": "the postgres image (its superuser's password)",
    "POSTGRES_DB": "the postgres image (the database it creates)",
    "REDIS_PASSWORD": "docker-compose.yml interpolates it into Redis' command and REDIS_URL",
    "REDISCLI_AUTH": "redis-cli, in the redis container's health check",
    "FLOWER_BASIC_AUTH": "docker-compose.yml interpolates it into Flower's command",
    "GRAFANA_ADMIN_PASSWORD": "docker-compose.yml hands it to Grafana",
    "MINIO_ROOT_USER": "the minio image", "MINIO_ROOT_PASSWORD": "the minio image",
    "MINIO_USER": "minio-init's mc command", "MINIO_PASSWORD": "minio-init's mc command",
    "BUCKET": "minio-init's mc command",
}
# Prefixes of variables other programs read: OpenTelemetry's SDK (tracing, docs/operations.md "Tracing"),
# Grafana's own settings.
NOT_SETTING_PREFIXES = {"OTEL_": "OpenTelemetry's SDK", "GF_": "Grafana"}
# Settings without a default (None: `mediagen run` starts embedded servers instead, which a
# deployment has not), less the optional ones; and settings every deployment must set although
# they have one.
OPTIONAL_WITHOUT_DEFAULT = {
    "MODELS_FILE": "a models file is optional (the settings decide)",
    "REDIS_TLS_CA_FILE": "TLS to Redis is optional (a rediss:// REDIS_URL)",
    "REDIS_TLS_CERT_FILE": "a client certificate only when Redis asks for one",
    "REDIS_TLS_KEY_FILE": "goes with REDIS_TLS_CERT_FILE",
    "SECRETS_DIR": "secrets from files are optional (deploy/compose/secrets.yml)",
}
MUST_SET = {
    "METRICS_TOKEN": "the API is published: /metrics needs a token, which Prometheus sends",
    "AUTH_REQUIRED": "published: every caller needs a key from the start (true)",
}
REQUIRED = {name.upper() for name, field in Settings.model_fields.items()
            if field.default is None} - set(OPTIONAL_WITHOUT_DEFAULT) | set(MUST_SET)
COMPOSE = (ROOT / "docker-compose.yml", ROOT / "docker-compose.s3.yml")


def _unknown(names: set[str]) -> set[str]:
    return {n for n in names if n not in SETTINGS and n not in NOT_SETTINGS
            and not n.startswith(tuple(NOT_SETTING_PREFIXES))}


def _env_file_keys(path: Path) -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def test_the_required_settings_are_the_ones_without_a_default() -> None:
    assert {"DATABASE_URL", "REDIS_URL", "METRICS_TOKEN", "AUTH_REQUIRED"} == REQUIRED
    assert not set(NOT_SETTINGS) & SETTINGS


# --- Kubernetes -------------------------------------------------------------------------------
def _kubernetes() -> tuple[set[str], set[str], set[str], list[dict[str, Any]]]:
    """The ConfigMap's keys, the containers' own env names, the Secret's keys (the example
    lists them), and the objects."""
    objects = rendered(EXAMPLE)
    (config,) = by_kind(objects, "ConfigMap").values()
    env = {e["name"] for spec in pod_specs(objects).values()
           for c in spec["containers"] for e in c.get("env", [])}
    secret = _env_file_keys(EXAMPLE / "secrets.env-example")
    return set(config["data"]), env, secret, objects


def test_every_variable_of_the_manifests_is_a_setting() -> None:
    config, env, secret, _ = _kubernetes()
    assert not _unknown(config | env | secret), "not settings (nor documented others)"
    # Only settings: the pods run mediagen alone.
    assert (config | env | secret) <= SETTINGS


def test_the_manifests_set_every_required_setting() -> None:
    config, env, secret, objects = _kubernetes()
    assert REQUIRED - (config | env | secret) == set()
    assert {"DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"} <= secret  # secrets, not config
    assert by_kind(objects, "ConfigMap") and not config & secret  # one place for each
    (data,) = [o["data"] for o in objects if o["kind"] == "ConfigMap"]
    assert data["AUTH_REQUIRED"] == "true"
    Settings(_env_file=None, **{k.lower(): v for k, v in data.items()})  # type: ignore[arg-type]


# --- docker-compose -------------------------------------------------------------------------------
def _services(path: Path) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return services


def test_every_variable_of_compose_is_a_setting_or_documented() -> None:
    for path in COMPOSE:
        for name, service in _services(path).items():
            names = set(service.get("environment") or {})
            assert not _unknown(names), (path.name, name, _unknown(names))
            if service.get("image", "").startswith("mediagen"):
                assert names <= SETTINGS, (path.name, name, names - SETTINGS)
    for example in (ROOT / "compose.env-example", ROOT / ".env-example"):
        assert not _unknown(_env_file_keys(example)), example.name


def test_compose_passes_every_setting_and_sets_the_required_ones() -> None:
    for name, service in _services(COMPOSE[0]).items():
        if not service.get("image", "").startswith("mediagen"):
            continue
        assert service["env_file"] == ".env", name  # WEBHOOK_SECRET, MODELS_FILE, OTEL_*...
        environment = service["environment"]
        assert set(environment) >= REQUIRED, (name, REQUIRED - set(environment))
        assert environment["AUTH_REQUIRED"] == "true"
        # What a development .env says must not decide these inside a container.
        assert environment["API_HOST"] == "0.0.0.0" and environment["API_PORT"] == "8000"


def _docker_compose() -> str:
    """Debian's docker-compose (no engine needed for `config`), installed as
    scripts/check_compose.py installs it."""
    spec = importlib.util.spec_from_file_location("check_compose", ROOT / "scripts/check_compose.py")
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    found: str | None = check._docker_compose()
    return found or tool("docker-compose", "Debian package docker-compose")


def test_settings_in_dot_env_reach_the_containers(tmp_path: Path) -> None:
    """`docker-compose config` with a .env of the stack's secrets and settings: every mediagen
    container gets the settings, and the stack's own values win over a development .env's."""
    for path in COMPOSE:
        shutil.copy(path, tmp_path / path.name)
    dot_env = {"POSTGRES_PASSWORD": "p", "REDIS_PASSWORD": "r", "FLOWER_BASIC_AUTH": "u:p",
               "METRICS_TOKEN": "m", "WEBHOOK_SECRET": "whsec_dGVzdA==",
               "MODELS_FILE": "/data/models.toml", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
               "AUTH_REQUIRED": "false", "API_HOST": "127.0.0.1", "FORWARDED_ALLOW_IPS": "10.9.9.9"}
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dot_env.items()))
    run = subprocess.run([_docker_compose(), "config"], cwd=tmp_path, capture_output=True,
                         text=True, check=False, timeout=60,
                         env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load(run.stdout)["services"]
    for name in ("api", "celery_worker", "beat", "migrate"):
        env = services[name]["environment"]
        for key in ("WEBHOOK_SECRET", "MODELS_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            assert env[key] == dot_env[key], (name, key)
        assert (env["AUTH_REQUIRED"], env["API_HOST"]) == ("true", "0.0.0.0"), name
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"


def test_secrets_as_files_reach_the_containers(tmp_path: Path) -> None:
    """deploy/compose/secrets.yml mounts secret settings as files where SECRETS_DIR says, in
    every mediagen container, each named after a secret setting."""
    for path in COMPOSE:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "deploy" / "compose").mkdir(parents=True)
    shutil.copy(ROOT / "deploy/compose/secrets.yml", tmp_path / "deploy/compose/secrets.yml")
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=p\nREDIS_PASSWORD=r\n"
                                   "FLOWER_BASIC_AUTH=u:p\nMETRICS_TOKEN=m\n")
    run = subprocess.run([_docker_compose(), "-f", "docker-compose.yml", "-f",
                          "deploy/compose/secrets.yml", "config"], cwd=tmp_path,
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr
    config = yaml.safe_load(run.stdout)
    declared = set(config["secrets"])
    assert declared and {name.upper() for name in declared} <= {s.upper() for s in SECRETS}
    for name, service in config["services"].items():
        if not service.get("image", "").startswith("mediagen:"):
            continue
        assert service["environment"]["SECRETS_DIR"] == "/run/secrets", name
        assert {s["source"] for s in service["secrets"]} == declared, name
        assert service["environment"]["AUTH_REQUIRED"] == "true", name  # the stack's own kept


def test_the_api_scales_behind_the_proxy() -> None:
    services = _services(COMPOSE[0])
    api, proxy = services["api"], services["proxy"]
    assert "ports" not in api and api["expose"] == ["8000"]
    assert api["environment"]["FORWARDED_ALLOW_IPS"] == "*"  # its one peer is the proxy
    assert proxy["ports"] == ["8000:8000"]
    mount = "./deploy/compose/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert mount in proxy["volumes"]
    config = (ROOT / "deploy" / "compose" / "haproxy.cfg").read_text()
    assert re.search(r"^\s*server-template api \d+ api:8000 check\b", config, re.M)
    assert "option httpchk GET /readyz" in config
    # The proxy replaces what the client sent, so the API may believe any peer's headers.
    assert "http-request set-header X-Forwarded-For %[src]" in config


def test_haproxy_accepts_the_proxy_configuration() -> None:
    """Debian's haproxy checks the file."""
    haproxy = tool("haproxy", "Debian package haproxy")
    run = subprocess.run([haproxy, "-c", "-f", str(ROOT / "deploy/compose/haproxy.cfg")],
                         capture_output=True, text=True, check=False, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


# --- the image's build context ------------------------------------------------------------------
def test_the_build_context_leaves_a_checkout_s_private_files_out() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".venv-tools", ".mediagen", ".env", "storage", ".git", ".pytest_cache",
            ".mypy_cache", ".ruff_cache", "**/__pycache__", ".bench", ".schemathesis"} <= patterns
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for sources in copied:  # what the image is made of is still sent
        for source in sources.split():
            assert source not in patterns and source.split("/")[0] not in patterns, source
