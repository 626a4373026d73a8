"""deploy/: the Prometheus configuration and alerts, and the Grafana dashboard and provisioning
(the Kubernetes kit has tests of its own, tests/deploy/; its autoscaling queries are checked here
with the alerts').

- promtool (Debian package `prometheus`; `make test` installs it through scripts/ensure-tools.sh)
  checks the rules, runs their unit tests (deploy/prometheus/alerts.test.yml) and checks the
  configuration. Missing promtool fails under CI (CI=true) and skips elsewhere.
- The dashboard is checked as Grafana reads it (uid, schema version, panel types, a grid without
  overlaps, targets on the provisioned data source).
- Every mediagen metric a panel, an alert or the workers' ScaledObject names is exposed by a live
  API and worker exporter of our own, after a job ran; and every metric they expose is on the
  dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import redis_server, start_api, start_worker
from tests.support import ROOT, free_port, submit, wait_terminal

PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mediagen.json"
KEDA = ROOT / "deploy" / "kubernetes" / "base" / "worker.yaml"
METRIC = re.compile(r"\bmediagen_[a-z0-9_]+\b")
# Names Prometheus makes itself, allowed in queries besides mediagen's.
PROMETHEUS_OWN = {"up"}
PANEL_TYPES = {"row", "timeseries", "stat"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose() -> dict[str, Any]:
    services: dict[str, Any] = _yaml(ROOT / "docker-compose.yml")["services"]
    return services


def _dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(PROMETHEUS / "alerts.yml")["groups"]
            for rule in group["rules"] if "alert" in rule]


def _queries() -> dict[str, str]:
    """Every PromQL expression of deploy/, by where it is."""
    found = {f"alert {rule['alert']}": rule["expr"] for rule in _alert_rules()}
    for doc in yaml.safe_load_all(KEDA.read_text()):  # the workers' autoscaling (Kubernetes)
        if doc["kind"] == "ScaledObject":
            for n, trigger in enumerate(doc["spec"]["triggers"]):
                found[f"ScaledObject trigger {n}"] = trigger["metadata"]["query"]
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


# --- promtool ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    reason = "promtool is not installed (Debian package prometheus: scripts/ensure-tools.sh)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must run these checks")
    pytest.skip(reason)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    run = _run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in run.stdout


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    run = _run(promtool, "test", "rules", str(PROMETHEUS / "alerts.test.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_promtool_checks_the_configuration(promtool: str, tmp_path: Path) -> None:
    """The configuration names the token file the compose service writes at start; the check
    runs on a copy whose token file exists here."""
    config = _yaml(PROMETHEUS / "prometheus.yml")
    prometheus = _compose()["prometheus"]
    started = " ".join(prometheus["command"])
    token = tmp_path / "metrics-token"
    token.write_text("a-token")
    for job in config["scrape_configs"]:
        credentials = job["authorization"]["credentials_file"]
        assert f"> {credentials} " in started, (job["job_name"], started)
        job["authorization"]["credentials_file"] = str(token)
    assert config["rule_files"] == ["alerts.yml"]  # beside it, in the repository and the container
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in started
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 1 rule files found" in run.stdout


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    services = _compose()
    worker_env = services["celery_worker"]["environment"]
    for name, service, port in (("mediagen-api", "api", 8000),
                                ("mediagen-worker", "celery_worker", 9808)):
        job = jobs[name]
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port and service in services
    assert worker_env["WORKER_METRICS_HOST"] == "0.0.0.0"
    assert "ports" not in services["celery_worker"]  # the exporter stays on the compose network


def test_every_alert_is_labelled_annotated_and_unit_tested() -> None:
    tests = _yaml(PROMETHEUS / "alerts.test.yml")["tests"]
    cases = [case for group in tests for case in group["alert_rule_test"]]
    for rule in _alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} is never shown silent"


# --- Grafana -----------------------------------------------------------------------------------
def test_the_dashboard_is_a_grafana_dashboard_on_the_provisioned_datasource() -> None:
    board = _dashboard()
    (source,) = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 39
    assert board["id"] is None  # provisioned: Grafana gives it its own id
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, panel["title"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
            if "histogram_quantile" in target["expr"]:
                assert "_bucket" in target["expr"] and "le" in target["expr"], panel["title"]

    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        g = panel["gridPos"]
        return {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}

    for a, b in combinations(panels, 2):
        assert not cells(a) & cells(b), f"{a['title']!r} overlaps {b['title']!r}"


def test_grafana_provisions_the_dashboard_folder_compose_mounts() -> None:
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "mediagen.yml")["providers"]
    assert provider["type"] == "file"
    grafana = _compose()["grafana"]
    mounts = {volume.split(":")[1]: volume for volume in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == (
        f"./deploy/grafana/dashboards:{provider['options']['path']}:ro")
    assert mounts["/etc/grafana/provisioning"] == (
        "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_queries_name_only_mediagen_metrics_or_prometheus_own() -> None:
    jobs = [job["job_name"] for job in _yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]]
    for where, expr in _queries().items():
        named = set(METRIC.findall(expr))
        own = {name for name in PROMETHEUS_OWN if re.search(rf"\b{name}\{{", expr)}
        assert named or own, f"{where} names no metric: {expr}"
        for op, value in re.findall(r'\bjob(=~?)"([^"]*)"', expr):
            matches = [j for j in jobs if (re.fullmatch(value, j) if op == "=~" else value == j)]
            assert matches, f"{where} selects no scrape job of prometheus.yml: {expr}"


# --- live: the names exist -----------------------------------------------------------------------
@dataclass
class Live:
    api: str
    worker: str  # the worker's exporter


@pytest.fixture(scope="module")
def live(database: str) -> Iterator[Live]:
    """An API and a worker of our own, on a Redis server of our own, the worker's exporter on a
    free port."""
    port, server = redis_server()
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "WORKER_METRICS_PORT": str(free_port()),
           "METRICS_ENABLED": "true", "METRICS_TOKEN": ""}
    broker = redis.Redis(port=port)
    worker = start_worker("worker-deploy", broker, env)
    api, url = start_api("api-deploy", env)
    try:
        yield Live(url, f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}")
    finally:
        api.stop()
        worker.stop()
        broker.close()
        server.terminate()
        server.wait(10)


def _exposed(text: str) -> tuple[dict[str, str], list[Sample]]:
    """The sample names a scrape can show, each with its family (a histogram's _bucket, _sum
    and _count, a counter's _total, even before any child exists), and the samples it shows."""
    names: dict[str, str] = {}
    samples: list[Sample] = []
    families = list(text_string_to_metric_families(text))
    # prometheus-client's text format adds a `<name>_created` gauge (the creation time) beside
    # each counter and histogram.
    stamps = {f"{f.name}_created" for f in families if f.type in ("counter", "histogram")}
    for family in families:
        if family.name in stamps:
            continue
        if family.type == "histogram":
            names |= {f"{family.name}{suffix}": family.name
                      for suffix in ("_bucket", "_sum", "_count")}
        elif family.type == "counter":
            names[f"{family.name}_total"] = family.name
        else:
            names[family.name] = family.name
        samples += family.samples
    return names, samples


async def test_every_metric_on_the_dashboard_and_in_the_alerts_is_exposed(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.api, timeout=30) as client:
        job_id = await submit(client, "a lighthouse at dusk", width=64, height=64)
        assert (await wait_terminal(client, job_id))["status"] == "completed"
        # With METRICS_TOKEN unset, a scrape carrying an empty bearer is served: Prometheus
        # sends `Authorization: Bearer` when its token file (compose: $METRICS_TOKEN) is empty.
        scrapes = [await client.get("/metrics", headers={"Authorization": "Bearer"}),
                   await client.get(f"{live.worker}/metrics")]
    exposed: dict[str, str] = {}
    samples: list[Sample] = []
    for scrape in scrapes:
        assert scrape.status_code == 200, scrape.text
        names, shown = _exposed(scrape.text)
        exposed |= names
        samples += shown
    assert sum(s.value for s in samples if s.name == "mediagen_jobs_finished_total"
               and s.labels.get("status") == "completed") >= 1

    used: dict[str, set[str]] = {}
    for where, expr in _queries().items():
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    missing = {name: sorted(where) for name, where in used.items() if name not in exposed}
    assert not missing, f"named in deploy/ but not exposed: {missing}"

    graphed = {exposed[name] for name, where in used.items()
               if any(w.startswith("panel") for w in where)}
    ungraphed = sorted({family for name, family in exposed.items()
                        if name.startswith("mediagen_")} - graphed)
    assert not ungraphed, f"exposed but on no panel of the dashboard: {ungraphed}"
