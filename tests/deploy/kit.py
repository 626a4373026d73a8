"""The Kubernetes kit (deploy/kubernetes) as the tests see it: rendered with `kubectl kustomize`
once per test process, and the tools that check it (scripts/ensure-tools.sh installs them).
A tool that is missing fails the tests under CI (CI set) and skips them elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

KIT = ROOT / "deploy" / "kubernetes"
BASE = KIT / "base"
EXAMPLE = KIT / "overlays" / "example"
TOOLS = ROOT / ".venv-tools" / "bin"
SECRET = "mediagen-secrets"  # the Secret the kit reads and never creates


def tool(path: str | Path, what: str) -> str:
    """The tool's path, or the test skips (fails under CI) saying how to get it."""
    found = shutil.which(str(path))
    if found:
        return found
    reason = f"{path} is not installed ({what}: scripts/ensure-tools.sh)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must run these checks")
    pytest.skip(reason)


@cache
def _render(folder: Path) -> tuple[str, str]:
    run = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                         check=False, timeout=60)
    return run.stdout, (run.stderr if run.returncode else "")


def rendered_text(folder: Path) -> str:
    """The YAML `kubectl kustomize` makes of `folder` (it fails the test if it cannot)."""
    tool("kubectl", "Debian package kubernetes-client")
    text, error = _render(folder)
    assert not error, f"kubectl kustomize {folder.relative_to(ROOT)}: {error}"
    return text


def rendered(folder: Path) -> list[dict[str, Any]]:
    """The objects of `folder`, rendered."""
    return [doc for doc in yaml.safe_load_all(rendered_text(folder)) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod template of every workload (Deployments and Jobs), by the workload's name."""
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects
            if o["kind"] in ("Deployment", "Job")}
