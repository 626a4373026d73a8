"""Check docker-compose.yml (and docker-compose.s3.yml) without a Docker engine.

- Structure: the services exist, the worker consumes the queues tasks go to, every mediagen
  variable is a setting, every mediagen container gets .env's settings (env_file), the stateful
  services have health checks.
- Exposure: only the proxy in front of the API is published on every interface, the API
  itself is not (so it scales), and it requires API keys (AUTH_REQUIRED=true) and a metrics
  token; anything else binds 127.0.0.1.
- Images: every third-party image is pinned to a version (no `latest`, no bare name).
- Secrets: `docker-compose config` fails, naming the variable, while a secret is missing, and
  passes once they are set; no secret has a default. Debian's docker-compose 1.29 (no engine
  needed for `config`) is installed when missing.
- The observability profile: Prometheus and Grafana only under `--profile observability`, with
  deploy/ mounted read-only. Compose interpolates every service whatever the profiles, so
  Grafana's password cannot be `:?` (the stack without the profile would need it): `config`
  passes without it, and the Grafana service's own command refuses to start while it is empty,
  which is run here.

Exit status 1 with the problems listed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mediagen.broker import QUEUES
from mediagen.config import Settings

REQUIRED = {"api", "proxy", "celery_worker", "beat", "flower", "postgres", "redis", "migrate"}
PUBLISHED = "proxy"  # the one service published beyond this host
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "METRICS_TOKEN")
S3_SECRETS = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.s3.yml")
OBSERVABILITY = ("prometheus", "grafana")
GRAFANA_ADMIN = "GRAFANA_ADMIN_PASSWORD"


def _structure(compose: dict, found: list[str]) -> None:
    services = compose["services"]
    found += [f"service {name} missing" for name in sorted(REQUIRED - set(services))]
    worker = services.get("celery_worker", {}).get("command", [])
    if "-Q" not in worker or worker[worker.index("-Q") + 1] != ",".join(QUEUES):
        found.append(f"celery_worker does not consume the queues tasks go to: {QUEUES}")
    known = {name.upper() for name in Settings.model_fields}
    for name, service in services.items():
        if not service.get("image", "").startswith("mediagen"):
            continue
        for key in service.get("environment") or {}:
            if key not in known:
                found.append(f"{name}: {key} is not a mediagen setting")
        if service.get("env_file") != ".env":
            found.append(f"{name}: .env's settings do not reach it (env_file: .env)")
    api = services.get("api", {})
    if api.get("ports") or "8000" not in [str(port) for port in api.get("expose", [])]:
        found.append("api: publishes a host port (one container only) instead of `expose`")
    for name in ("postgres", "redis", "celery_worker"):
        if "healthcheck" not in services.get(name, {}):
            found.append(f"{name} has no healthcheck")
    for name in OBSERVABILITY:
        service = services.get(name, {})
        if service.get("profiles") != ["observability"]:
            found.append(f"{name} is not (only) in the observability profile")
        for volume in service.get("volumes", []):
            if volume.startswith("./deploy/") and not volume.endswith(":ro"):
                found.append(f"{name} mounts {volume} writable")
    if str((services.get("api", {}).get("environment") or {}).get("AUTH_REQUIRED")) != "true":
        found.append("api: published on every interface without AUTH_REQUIRED=true")
    if (services.get("celery_worker", {}).get("environment") or {}).get(
        "WORKER_METRICS_HOST"
    ) != "0.0.0.0":  # noqa: S104 - inside the compose network; the port is not published
        found.append("celery_worker's metrics exporter is not reachable by Prometheus")


def _exposure_and_images(path: Path, found: list[str]) -> None:
    for name, service in yaml.safe_load(path.read_text())["services"].items():
        for port in service.get("ports", []):
            if name != PUBLISHED and not str(port).startswith("127.0.0.1:"):
                found.append(f"{path.name}: {name} publishes {port} beyond this host")
        image = service.get("image", "")
        if image and not image.startswith("mediagen"):
            tag = image.rpartition(":")[2] if ":" in image else ""
            if not re.search(r"\d", tag) or tag == "latest":
                found.append(f"{path.name}: {name} uses an unpinned image {image!r}")


def _secrets(found: list[str]) -> None:
    text = "".join(path.read_text() for path in FILES)
    for secret in (*SECRETS, *S3_SECRETS):
        uses = re.findall(r"\$\{" + secret + r"(:?[-?][^}]*)?\}", text)
        if not uses:
            found.append(f"{secret} is not used")
        if any(not use.startswith(":?") for use in uses):
            found.append(f"{secret} has a default or may be empty; it must be required (:?)")


def _docker_compose() -> str | None:
    found = shutil.which("docker-compose")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    install = [*sudo, "apt-get", "install", "-y", "-q", "docker-compose"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True)
        subprocess.run(install, capture_output=True)
    return shutil.which("docker-compose")


def _config(
    binary: str, files: tuple[Path, ...], env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    args = [arg for path in files for arg in ("-f", str(path))]
    clean = {k: v for k, v in os.environ.items()
             if k not in (*SECRETS, *S3_SECRETS, GRAFANA_ADMIN)}
    return subprocess.run([binary, *args, *options, "config", *(() if options else ("-q",))],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**clean, **env})


def _observability(binary: str, secrets: dict[str, str], found: list[str]) -> None:
    """`--profile observability`: Grafana gets the password from .env, and without one its
    command stops with a message naming the variable (run here, up to that point)."""
    profile = ("--profile", "observability")
    for password in ("test-grafana-password", ""):
        env = {**secrets, GRAFANA_ADMIN: password} if password else secrets
        run = _config(binary, FILES[:1], env, *profile)
        if run.returncode:
            found.append(f"docker-compose --profile observability config: {run.stderr.strip()}")
            continue
        services = yaml.safe_load(run.stdout)["services"]
        missing = sorted(set(OBSERVABILITY) - set(services))
        if missing:
            found.append(f"--profile observability does not start {missing}")
            continue
        grafana = services["grafana"]
        if grafana["environment"].get("GF_SECURITY_ADMIN_PASSWORD") != password:
            found.append("Grafana's admin password is not GRAFANA_ADMIN_PASSWORD")
        if not password:
            script = grafana["command"][0].replace("$$", "$")
            guard = subprocess.run([*grafana["entrypoint"], script], capture_output=True,
                                   text=True, env={"GF_SECURITY_ADMIN_PASSWORD": ""})
            if guard.returncode == 0 or GRAFANA_ADMIN not in guard.stderr:
                found.append(f"Grafana starts without {GRAFANA_ADMIN}")


def _compose_config(found: list[str]) -> None:
    binary = _docker_compose()
    if binary is None:
        found.append("docker-compose is not installed and could not be installed")
        return
    values = {name: f"test-{name.lower()}" for name in (*SECRETS, *S3_SECRETS)}
    values["FLOWER_BASIC_AUTH"] = "ops:test-password"
    for files, needed in ((FILES[:1], SECRETS), (FILES, (*SECRETS, *S3_SECRETS))):
        run = _config(binary, files, {k: values[k] for k in needed})
        if run.returncode:
            found.append(f"docker-compose config ({len(files)} files): {run.stderr.strip()}")
        for missing in needed:
            run = _config(binary, files, {k: values[k] for k in needed if k != missing})
            if run.returncode == 0 or missing not in run.stderr:
                found.append(f"docker-compose config passes without {missing}")
    _observability(binary, {k: values[k] for k in SECRETS}, found)


def problems() -> list[str]:
    found: list[str] = []
    _structure(yaml.safe_load(FILES[0].read_text()), found)
    for path in FILES:
        _exposure_and_images(path, found)
    _secrets(found)
    _compose_config(found)
    return found


if __name__ == "__main__":
    issues = problems()
    for issue in issues:
        print(f"docker-compose: {issue}", file=sys.stderr)
    print("docker-compose: OK" if not issues else f"{len(issues)} problem(s)")
    sys.exit(1 if issues else 0)
