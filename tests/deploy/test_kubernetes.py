"""The Kubernetes kit (deploy/kubernetes), checked without a cluster: `kubectl kustomize`
renders the base and the example overlay; kubernetes-validate accepts every object against
Kubernetes' own schemas (offline); the custom resources, which it has no schemas for, are held
here to what they name; checkov finds no failed check that is not documented; and the
workloads keep the promises docs/deployment.md makes (probes, security, one beat)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mediagen import __version__
from tests.deploy.kit import (
    BASE,
    EXAMPLE,
    KIT,
    SECRET,
    TOOLS,
    by_kind,
    pod_specs,
    rendered,
    rendered_text,
    tool,
)
from tests.support import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
# Custom resources: kubernetes-validate has no schema for them (it says so, and the test
# requires exactly that of these kinds); tests below check what they refer to instead.
CUSTOM = {
    "ScaledObject": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
# The oldest Kubernetes the kit is checked against (autoscaling/v2 and policy/v1 are GA from
# 1.23), and the newest kubernetes-validate knows (its default).
VERSIONS = ("1.25.0", None)
WORKLOADS = {"mediagen-api", "mediagen-worker", "mediagen-beat", "mediagen-migrate"}


@pytest.fixture(scope="module", params=[BASE, EXAMPLE], ids=["base", "example"])
def kit(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    return request.param, rendered(request.param)


# --- rendering -----------------------------------------------------------------------------
def test_kustomize_renders_every_part(kit: tuple[Path, list[dict[str, Any]]]) -> None:
    folder, objects = kit
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", name) for name in WORKLOADS - {"mediagen-migrate"}} <= kinds
    assert {("Job", "mediagen-migrate"), ("Service", "mediagen-api"),
            ("Service", "mediagen-worker"), ("HorizontalPodAutoscaler", "mediagen-api"),
            ("ScaledObject", "mediagen-worker"), ("PodDisruptionBudget", "mediagen-api"),
            ("PodDisruptionBudget", "mediagen-worker"), ("ServiceMonitor", "mediagen-api"),
            ("ServiceMonitor", "mediagen-worker"), ("PrometheusRule", "mediagen"),
            ("NetworkPolicy", "mediagen-default-deny")} <= kinds
    assert not [o for o in objects if o["kind"] == "Secret"], "the kit never creates a Secret"
    for obj in objects:
        assert obj["metadata"]["namespace"] == "mediagen", obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "mediagen"
    if folder == EXAMPLE:
        assert "Ingress" in {kind for kind, _ in kinds}


def test_the_base_image_is_this_version_and_the_example_pins_a_digest() -> None:
    base = {c["image"] for spec in pod_specs(rendered(BASE)).values()
            for c in spec["containers"]}
    assert base == {f"mediagen:{__version__}"}
    example = {c["image"] for spec in pod_specs(rendered(EXAMPLE)).values()
               for c in spec["containers"]}
    (image,) = example
    assert re.fullmatch(r"[a-z0-9./-]+/mediagen@sha256:[0-9a-f]{64}", image), image


# --- kubernetes-validate ---------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v or "newest")
def test_kubernetes_validate_accepts_every_object(
    kit: tuple[Path, list[dict[str, Any]]], version: str | None, tmp_path: Path
) -> None:
    folder, objects = kit
    validate = tool(TOOLS / "kubernetes-validate", "PyPI kubernetes-validate")
    manifest = tmp_path / "kit.yaml"
    manifest.write_text(rendered_text(folder))
    args = [validate, "--strict", *(("-k", version) if version else ()), str(manifest)]
    run = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (run.stdout + run.stderr).splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed for " in line]
    unknown = [re.search(r"schema for kind (\S+) with api version (\S+)", line)
               for line in lines if line.startswith("WARN")]
    assert all(unknown), lines
    assert sorted((m.group(1), m.group(2)) for m in unknown if m) == sorted(
        (o["kind"], o["apiVersion"]) for o in objects if o["kind"] in CUSTOM)
    assert all(CUSTOM[o["kind"]] == o["apiVersion"] for o in objects if o["kind"] in CUSTOM)
    assert len(passed) == len([o for o in objects if o["kind"] not in CUSTOM]), lines
    assert not [line for line in lines if line.startswith("ERROR")], lines


# --- the custom resources, checked against what they name -------------------------------------
def test_the_scaled_object_scales_the_workers_on_the_backlog(
    kit: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, objects = kit
    (scaled,) = by_kind(objects, "ScaledObject").values()
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in by_kind(objects, "Deployment")
    assert spec["scaleTargetRef"]["name"].endswith("mediagen-worker")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    queries = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert re.fullmatch(r"https?://\S+", meta["serverAddress"])
        assert float(meta["threshold"]) > 0
        queries.append(meta["query"])
    # The backlog gauges, combined as the alerts combine them (every API reports the same).
    assert any(q.startswith("max(mediagen_jobs{") and 'status="pending"' in q for q in queries)
    assert any(q.startswith("max(mediagen_oldest_pending_age_seconds") for q in queries)


def test_the_workers_have_no_replica_count_of_their_own() -> None:
    """The HPA and KEDA own the API's and the workers' replica counts: a count in the
    Deployment would be put back at every apply."""
    deployments = by_kind(rendered(EXAMPLE), "Deployment")
    assert "replicas" not in deployments["mediagen-api"]["spec"]
    assert "replicas" not in deployments["mediagen-worker"]["spec"]
    hpa = by_kind(rendered(EXAMPLE), "HorizontalPodAutoscaler")["mediagen-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mediagen-api" and hpa["minReplicas"] >= 2


def test_service_monitors_scrape_the_services_with_the_metrics_token(
    kit: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, objects = kit
    services = by_kind(objects, "Service")
    jobs = {job["job_name"] for job in
            yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    named = set()
    for monitor in by_kind(objects, "ServiceMonitor").values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services.values()
                      if selector.items() <= s["metadata"]["labels"].items()]
        ports = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            auth = endpoint["authorization"]
            assert auth["type"] == "Bearer"
            assert auth["credentials"] == {"name": SECRET, "key": "METRICS_TOKEN"}
            (job,) = [r["replacement"] for r in endpoint["relabelings"]
                      if r["targetLabel"] == "job"]
            named.add(job)  # as the dashboard's and the alerts' queries expect
    assert named == jobs


def test_the_prometheus_rule_is_made_from_the_alert_rules(
    kit: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, objects = kit
    (rule,) = by_kind(objects, "PrometheusRule").values()
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert rule["spec"] == alerts
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "prometheus_rule.py"),
                           "--check"], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr


# --- checkov -----------------------------------------------------------------------------------
def _skips() -> dict[str, str]:
    """The checks .checkov.yaml skips, each with the reason written above it."""
    found: dict[str, str] = {}
    reason: list[str] = []
    in_list = False
    for line in (KIT / ".checkov.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("skip-check:"):
            in_list, reason = True, []
        elif in_list and stripped.startswith("#"):
            reason.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            found[stripped[2:].strip()] = " ".join(reason)
            reason = []
    return found


def test_every_skipped_check_says_why() -> None:
    skips = _skips()
    config = yaml.safe_load((KIT / ".checkov.yaml").read_text())
    assert sorted(skips) == sorted(config["skip-check"])
    assert config["skip-download"] is True  # never asks anyone's server anything
    for check, reason in skips.items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 40, (check, reason)
    for obj in rendered(EXAMPLE):
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, why = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(why) > 40, value


def test_checkov_finds_no_undocumented_failure(tmp_path: Path) -> None:
    """On the example overlay, which holds every object of the base: nothing fails; what is
    skipped is .checkov.yaml's list and the objects' own annotated exceptions."""
    checkov = tool(TOOLS / "checkov", "PyPI checkov")
    objects = rendered(EXAMPLE)
    manifest = tmp_path / "mediagen.yaml"
    manifest.write_text(rendered_text(EXAMPLE))
    run = subprocess.run(
        [checkov, "--config-file", str(KIT / ".checkov.yaml"), "-f", str(manifest), "-o", "json"],
        capture_output=True, text=True, check=False, timeout=300, cwd=tmp_path,
    )
    report = json.loads(run.stdout)
    failed = [(c["check_id"], c["check_name"], c["resource"])
              for c in report["results"].get("failed_checks", [])]
    assert not failed, failed
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["passed"] > 100, summary
    assert summary["resource_count"] >= len(objects), summary  # it counts pod templates too
    annotated = sum(1 for o in objects for key in o["metadata"].get("annotations", {})
                    if key.startswith("checkov.io/skip"))
    assert summary["skipped"] == annotated, summary
    assert run.returncode == 0, run.stderr


# --- the workloads' promises -------------------------------------------------------------------
def test_every_container_runs_locked_down() -> None:
    for name, spec in pod_specs(rendered(EXAMPLE)).items():
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, name
            assert set(container["resources"]["limits"]) == {"cpu", "memory"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], name  # the only place it writes
            sources = container["envFrom"]
            assert {"secretRef": {"name": SECRET}} in sources, name
            assert any(s.get("configMapRef", {}).get("name", "").startswith("mediagen-config")
                       for s in sources), name


def test_probes_are_the_agreed_endpoints() -> None:
    specs = pod_specs(rendered(EXAMPLE))

    def probes(name: str) -> tuple[dict[str, Any], dict[str, Any], int]:
        (container,) = specs[name]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        assert ports[ready["port"]] == ports[live["port"]]
        return ready, live, ports[ready["port"]]

    ready, live, port = probes("mediagen-api")
    assert (ready["path"], live["path"], port) == ("/readyz", "/livez", 8000)
    ready, live, port = probes("mediagen-worker")
    assert (ready["path"], live["path"], port) == ("/readyz", "/livez", 9808)
    (worker,) = specs["mediagen-worker"]["containers"]
    env = {e["name"]: e.get("value") for e in worker.get("env", [])}
    assert env["WORKER_METRICS_HOST"] == "0.0.0.0"  # the kubelet probes from outside the pod


def test_one_beat_and_a_migrate_job() -> None:
    objects = rendered(EXAMPLE)
    beat = by_kind(objects, "Deployment")["mediagen-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}
    assert "mediagen-beat" not in by_kind(objects, "PodDisruptionBudget")  # drains may move it
    commands = {name: spec["containers"][0]["command"]
                for name, spec in pod_specs(objects).items()}
    assert commands == {"mediagen-api": ["mediagen", "api"],
                        "mediagen-worker": ["mediagen", "worker"],
                        "mediagen-beat": ["mediagen", "beat"],
                        "mediagen-migrate": ["mediagen", "migrate"]}
    job = by_kind(objects, "Job")["mediagen-migrate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["ttlSecondsAfterFinished"] > 0  # so the next apply can create it anew


def test_network_policies_deny_by_default_and_open_the_api_port() -> None:
    policies = by_kind(rendered(EXAMPLE), "NetworkPolicy")
    deny = policies["mediagen-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mediagen",
                                                  "app.kubernetes.io/part-of": "mediagen"}
    api = policies["mediagen-api"]["spec"]
    assert [p["port"] for rule in api["ingress"] for p in rule["ports"]] == [8000]
    worker = policies["mediagen-worker-metrics"]["spec"]
    assert [p["port"] for rule in worker["ingress"] for p in rule["ports"]] == [9808]
    assert all(rule.get("from") for rule in worker["ingress"])  # Prometheus only
