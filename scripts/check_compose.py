"""Check docker-compose.yml without a Docker engine: structure, queues and settings agree with
the code, and (when `docker-compose` is installed) the Compose schema via `docker-compose config`.
Exit status 1 with the problems listed."""

from __future__ import annotations

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


def problems() -> list[str]:
    found: list[str] = []
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    found += [f"service {name} missing" for name in sorted(REQUIRED - set(services))]
    worker = services.get("celery_worker", {}).get("command", [])
    if "-Q" not in worker or worker[worker.index("-Q") + 1] != ",".join(QUEUES):
        found.append(f"celery_worker does not consume the queues tasks go to: {QUEUES}")
    if "5555:5555" not in services.get("flower", {}).get("ports", []):
        found.append("flower is not published on :5555")
    known = {name.upper() for name in Settings.model_fields}
    for name, service in services.items():
        for key in (service.get("environment") or {}):
            if service.get("image", "").startswith("mediagen") and key not in known:
                found.append(f"{name}: {key} is not a mediagen setting")
    for name in ("postgres", "redis", "celery_worker"):
        if "healthcheck" not in services.get(name, {}):
            found.append(f"{name} has no healthcheck")
    if shutil.which("docker-compose"):
        for args in ([], ["--profile", "s3"]):
            run = subprocess.run(["docker-compose", *args, "config", "-q"], cwd=ROOT,
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                found.append(f"docker-compose {' '.join(args)} config: {run.stderr.strip()}")
    return found


if __name__ == "__main__":
    issues = problems()
    for issue in issues:
        print(f"docker-compose.yml: {issue}", file=sys.stderr)
    print("docker-compose.yml: OK" if not issues else f"{len(issues)} problem(s)")
    sys.exit(1 if issues else 0)
