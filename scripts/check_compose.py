"""Check docker-compose.yml (and docker-compose.s3.yml) without a Docker engine.

- Structure: the services exist, the worker consumes the queues tasks go to, every mediagen
  variable is a setting, the stateful services have health checks.
- Exposure: only the API is published on every interface; anything else binds 127.0.0.1.
- Images: every third-party image is pinned to a version (no `latest`, no bare name).
- Secrets: `docker-compose config` fails, naming the variable, while a secret is missing, and
  passes once they are set; no secret has a default. Debian's docker-compose 1.29 (no engine
  needed for `config`) is installed when missing.

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

REQUIRED = {"api", "celery_worker", "beat", "flower", "postgres", "redis", "migrate"}
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")
S3_SECRETS = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.s3.yml")


def _structure(compose: dict, found: list[str]) -> None:
    services = compose["services"]
    found += [f"service {name} missing" for name in sorted(REQUIRED - set(services))]
    worker = services.get("celery_worker", {}).get("command", [])
    if "-Q" not in worker or worker[worker.index("-Q") + 1] != ",".join(QUEUES):
        found.append(f"celery_worker does not consume the queues tasks go to: {QUEUES}")
    known = {name.upper() for name in Settings.model_fields}
    for name, service in services.items():
        for key in service.get("environment") or {}:
            if service.get("image", "").startswith("mediagen") and key not in known:
                found.append(f"{name}: {key} is not a mediagen setting")
    for name in ("postgres", "redis", "celery_worker"):
        if "healthcheck" not in services.get(name, {}):
            found.append(f"{name} has no healthcheck")


def _exposure_and_images(path: Path, found: list[str]) -> None:
    for name, service in yaml.safe_load(path.read_text())["services"].items():
        for port in service.get("ports", []):
            if name != "api" and not str(port).startswith("127.0.0.1:"):
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
    binary: str, files: tuple[Path, ...], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    args = [arg for path in files for arg in ("-f", str(path))]
    clean = {k: v for k, v in os.environ.items() if k not in (*SECRETS, *S3_SECRETS)}
    return subprocess.run([binary, *args, "config", "-q"], cwd=ROOT, capture_output=True,
                          text=True, check=False, env={**clean, **env})


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
