"""Prometheus metrics, scraped from a real API and a real prefork worker (two pool processes
adding up through multiprocess mode), before and after a batch of jobs with a retry and a
failure: every counter and histogram moves by exactly what happened, and the backlog gauges
read what is waiting.

The pair runs on a database and a Redis database of its own, so no other test's jobs or
workers touch its figures.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

from mediagen.broker import Task, task_message
from mediagen.catalog import load_catalog
from mediagen.config import Settings
from mediagen.observability import metrics
from mediagen.scheduling import Queues, Taken, pool_of
from tests.conftest import DATABASES, REDIS, TMP, start_api
from tests.receiver import Receiver, receiving
from tests.support import Proc, free_port, in_one_rate_window, submit, wait_for, wait_terminal

REDIS_DB = REDIS.fresh()
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"metrics-webhooks-test-secret-32b").decode()
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("CI"):
        pytest.fail("promtool is missing (scripts/ensure-tools.sh installs it)")
    return found


@dataclass
class Pair:
    api: str
    worker_metrics: str
    multiproc: str


@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
async def pair(fresh_database: str, broker: redis.Redis) -> AsyncIterator[Pair]:
    """An API, and (started by the test, once jobs wait) a prefork worker with 2 processes."""
    env = {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS_DB, "WORKER_METRICS_PORT": "0"}
    api, url = start_api("metrics-api", env)
    multiproc = tempfile.mkdtemp(prefix="mediagen-test-metrics-", dir=TMP)
    try:
        yield Pair(url, f"http://127.0.0.1:{free_port()}/metrics", multiproc)
    finally:
        api.stop()


def start_prefork_worker(pair: Pair, broker: redis.Redis, extra: dict[str, str]) -> Proc:
    port = pair.worker_metrics.rsplit(":", 1)[1].split("/")[0]
    proc = Proc.start(
        "metrics-worker",
        ["python", "-m", "celery", "-A", "mediagen.worker", "worker", "-P", "prefork", "-c", "2",
         "-Q", "mediagen,mediagen.webhooks", "--loglevel", "INFO", "--without-mingle",
         "--without-gossip", "-n", f"metrics-{os.getpid()}@%h"],
        TMP / "metrics-worker.log",
        {"REDIS_URL": REDIS_DB, "WORKER_METRICS_PORT": port,
         "PROMETHEUS_MULTIPROC_DIR": pair.multiproc, **extra},
    )
    wait_for(lambda: broker.zcard("mediagen:workers") > 0, 30, proc, "worker heartbeat")
    wait_for(lambda: _answers(pair.worker_metrics), 30, proc, "worker exporter")
    return proc


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def scrape(url: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text, parse(response.text)


async def test_counters_move_by_exactly_what_happened(pair: Pair, broker: redis.Redis,
                                                      fresh_database: str) -> None:
    api_before = (await scrape(f"{pair.api}/metrics"))[1]
    async with httpx.AsyncClient(base_url=pair.api, timeout=30) as client:
        # Nobody consumes yet: the jobs wait, and the backlog gauges say so.
        prompts = ["a metered fox", "a metered owl", "a metered elk",
                   "[fault:transient=1] a metered storm", "[fault:permanent] a metered void"]
        ids = [await submit(client, prompt, width=64, height=64) for prompt in prompts]
        waiting = (await scrape(f"{pair.api}/metrics"))[1]
        assert value(waiting, "mediagen_jobs", status="pending") == 5
        assert value(waiting, "mediagen_jobs", status="processing") == 0
        assert value(waiting, "mediagen_workers_live") == 0
        assert value(waiting, "mediagen_oldest_pending_age_seconds") > 0

        worker = start_prefork_worker(pair, broker, {"DATABASE_URL": fresh_database})
        try:
            worker_before: Samples = {}  # a new worker, counting in a new directory
            details = [await wait_terminal(client, job_id) for job_id in ids]
            assert [d["status"] for d in details] == ["completed"] * 4 + ["failed"]
            assert details[3]["retry_count"] == 1
            api_text, api_after = await scrape(f"{pair.api}/metrics")
            worker_text, worker_after = await scrape(pair.worker_metrics)
        finally:
            worker.stop()

    def api_delta(name: str, **labels: str) -> float:
        return value(api_after, name, **labels) - value(api_before, name, **labels)

    def worker_delta(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    job = {"provider": "builtin", "model": "default"}
    assert api_delta("mediagen_jobs_created_total", **job) == 5
    assert api_delta("mediagen_http_requests_total", route="/api/v1/generate", method="POST",
                     status="201") == 5
    polled = api_delta("mediagen_http_requests_total", route="/api/v1/jobs/{job_id}",
                       method="GET", status="200")
    assert polled >= 5
    assert api_delta("mediagen_http_request_duration_seconds_count",
                     route="/api/v1/jobs/{job_id}", method="GET") == polled
    routes = {dict(labels).get("route") for (_, labels) in api_after}
    assert not any(UUID.search(route or "") for route in routes), routes

    # Worker: 5 first starts, one retry, 4 completions and 1 failure, each timed once. The
    # work ran in the pool's two processes and the exporter (the main process, which runs no
    # task) shows it: multiprocess mode adds them up.
    assert worker_delta("mediagen_job_queue_seconds_count", **job) == 5
    assert worker_delta("mediagen_job_retries_total", **job) == 1
    assert worker_delta("mediagen_jobs_finished_total", status="completed", **job) == 4
    assert worker_delta("mediagen_jobs_finished_total", status="failed", **job) == 1
    assert worker_delta("mediagen_job_run_seconds_count", status="completed", **job) == 4
    assert worker_delta("mediagen_job_run_seconds_count", status="failed", **job) == 1
    assert worker_delta("mediagen_job_run_seconds_bucket", status="completed", le="+Inf",
                        **job) == 4
    # Provider calls: creates 4 ok (one is the retry's), 2 refused by injected faults; one
    # look at each of the 4 predictions.
    calls = {"provider": "builtin", "operation": "create"}
    assert worker_delta("mediagen_provider_requests_total", outcome="ok", **calls) == 4
    assert worker_delta("mediagen_provider_requests_total", outcome="error", **calls) == 2
    assert worker_delta("mediagen_provider_request_duration_seconds_count", **calls) == 6
    assert worker_delta("mediagen_provider_requests_total", provider="builtin",
                        operation="get", outcome="ok") == 4
    assert worker_delta("mediagen_downloads_total", outcome="ok") == 4
    assert worker_delta("mediagen_storage_writes_total", backend="local", outcome="ok") == 4
    stored = sum(d["outputs"][0]["size"] for d in details[:4])
    assert worker_delta("mediagen_download_bytes_total") == stored
    assert worker_delta("mediagen_storage_write_bytes_total", backend="local") == stored

    # Nothing is left waiting; the API's own counters are not the worker's.
    for state in ("pending", "processing", "retrying"):
        assert value(api_after, "mediagen_jobs", status=state) == 0
    assert value(api_after, "mediagen_oldest_pending_age_seconds") == 0
    assert value(api_after, "mediagen_workers_live") >= 1
    assert total(api_after, "mediagen_jobs_finished_total") == total(
        api_before, "mediagen_jobs_finished_total")

    if tool := promtool():
        for text in (api_text, worker_text):
            checked = subprocess.run([tool, "check", "metrics"], input=text.encode(),
                                     capture_output=True, timeout=30)
            assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


async def test_a_cancel_is_counted_where_it_happened(pair: Pair) -> None:
    before = (await scrape(f"{pair.api}/metrics"))[1]
    async with httpx.AsyncClient(base_url=pair.api, timeout=30) as client:
        job_id = await submit(client, "a metered pause", width=64, height=64)  # no worker runs
        assert (await client.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    after = (await scrape(f"{pair.api}/metrics"))[1]
    labels = {"status": "canceled", "provider": "builtin", "model": "default"}
    assert value(after, "mediagen_jobs_finished_total", **labels) - value(
        before, "mediagen_jobs_finished_total", **labels) == 1
    # Never started: no run time to observe.
    assert value(after, "mediagen_job_run_seconds_count", **labels) == 0
    assert value(after, "mediagen_jobs", status="pending") == value(
        before, "mediagen_jobs", status="pending")


async def test_rate_limit_refusals_are_counted(fresh_database: str) -> None:
    proc, url = start_api("metrics-limited", {"DATABASE_URL": fresh_database,
                                             "REDIS_URL": REDIS_DB, "WORKER_METRICS_PORT": "0",
                                             "RATE_LIMIT_PER_MINUTE": "2", "FAST_PATHS": "true"})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await in_one_rate_window()
            codes = [(await client.post("/api/v1/generate", json={
                "prompt": "a limited hare", "parameters": {"width": 64, "height": 64}})).status_code
                for _ in range(4)]
            assert codes == [201, 201, 429, 429]
            samples = (await scrape(f"{url}/metrics"))[1]
        assert value(samples, "mediagen_rate_limited_total", limit="submissions") == 2
        assert value(samples, "mediagen_http_requests_total", route="/api/v1/generate",
                     method="POST", status="429") == 2
    finally:
        proc.stop()


async def test_a_metrics_token_is_required_when_set(fresh_database: str,
                                                    broker: redis.Redis) -> None:
    port = free_port()
    env = {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS_DB, "METRICS_TOKEN": "s3cret-scrape",
           "WORKER_METRICS_PORT": str(port)}
    api, url = start_api("metrics-token", env)
    worker = Proc.start(
        "metrics-token-worker",
        ["python", "-m", "celery", "-A", "mediagen.worker", "worker", "-P", "threads", "-c", "2",
         "-Q", "mediagen-unused", "--without-mingle", "--without-gossip",
         "-n", f"metrics-token-{os.getpid()}@%h"],
        TMP / "metrics-token-worker.log", env)
    exporter = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: _status(exporter) == 401, 30, worker, "worker exporter")
        for target in (f"{url}/metrics", exporter):
            assert _status(target) == 401
            assert _status(target, "Bearer wrong") == 401
            assert _status(target, "Bearer s3cret-scrape") == 200
    finally:
        worker.stop()
        api.stop()


def _status(url: str, authorization: str | None = None) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code
    except httpx.HTTPError:
        return 0


async def test_metrics_can_be_turned_off(fresh_database: str) -> None:
    proc, url = start_api("metrics-off", {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS_DB,
                                          "METRICS_ENABLED": "false"})
    try:
        assert _status(f"{url}/metrics") == 404
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A client webhook receiver: /ok/* answers 204, /gone/* 410 (given up at once)."""
    with receiving(lambda _, hit: Response(status_code=410 if hit.path.startswith("/gone/")
                                           else 204)) as rec:
        yield rec


async def test_webhook_deliveries_and_sweeper_rescues_are_counted(
        pair: Pair, broker: redis.Redis, fresh_database: str,
        receiver: Receiver) -> None:
    hooks, hits = receiver.url, receiver.hits
    env = {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS_DB, "WORKER_METRICS_PORT": "0",
           "WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "WEBHOOK_SECRET": WEBHOOK_SECRET}
    api, url = start_api("metrics-hooks-api", env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            ids = []
            for webhook in (f"{hooks}/ok/a", f"{hooks}/ok/b", f"{hooks}/gone/c"):
                response = await client.post("/api/v1/generate", json={
                    "prompt": "a metered pigeon", "parameters": {"width": 64, "height": 64},
                    "webhook": webhook, "webhook_events_filter": ["completed"]})
                assert response.status_code == 201, response.text
                ids.append(response.json()["job_id"])
            # Every start message is lost, long ago as far as the jobs know: only the sweeper
            # can start them now.
            # The outbox writes them just after each 201 (its own batch): wait until they are in.
            starts = ("mediagen", "mediagen\x06\x163")  # and the normal-priority starts
            wait_for(lambda: sum(broker.llen(k) for k in starts) >= 3, 10, what="the starts")
            broker.delete(*starts)
            db = await asyncpg.connect(fresh_database.replace("postgres://", "postgresql://", 1))
            try:
                await db.execute("UPDATE jobs SET dispatched_at = now() - interval '1 hour' "
                                 "WHERE status = 'pending'")
                stranded = await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'pending'")
            finally:
                await db.close()
            assert stranded >= 3  # ours, and any an earlier test left pending

            worker = start_prefork_worker(
                pair, broker, {k: v for k, v in env.items() if k != "WORKER_METRICS_PORT"})
            try:
                before = (await scrape(pair.worker_metrics))[1]
                broker.lpush("mediagen", task_message(Task("mediagen.jobs.sweep", ())))
                for job_id in ids:
                    assert (await wait_terminal(client, job_id))["status"] == "completed"
                wait_for(lambda: len(hits) == 3, 30, what="three webhook deliveries")
                # The last attempt is recorded just after its answer: wait for the counts.
                wait_for(lambda: _counted(pair.worker_metrics, before) == 3, 10,
                         what="deliveries counted")
                after = (await scrape(pair.worker_metrics))[1]
            finally:
                worker.stop()
    finally:
        api.stop()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mediagen_sweeper_rescues_total", kind="undispatched") == stranded
    for kind in ("retry_due", "lease_expired", "deadline", "upstream_cancel", "delivery"):
        assert delta("mediagen_sweeper_rescues_total", kind=kind) == 0, kind
    assert delta("mediagen_webhook_deliveries_total", outcome="delivered") == 2
    assert delta("mediagen_webhook_deliveries_total", outcome="failed") == 1
    assert delta("mediagen_webhook_deliveries_total", outcome="retry") == 0


def _counted(url: str, before: Samples) -> float:
    try:
        after = parse(httpx.get(url, timeout=2).text)
    except httpx.HTTPError:
        return -1
    return total(after, "mediagen_webhook_deliveries_total") - total(
        before, "mediagen_webhook_deliveries_total")


async def test_the_api_processes_add_up(fresh_database: str) -> None:
    """`mediagen api --workers 2`: a scrape of either process counts the requests both served."""
    multiproc = tempfile.mkdtemp(prefix="mediagen-test-api-metrics-", dir=TMP)
    port = free_port()
    proc, url = start_api(
        "metrics-two", {"DATABASE_URL": fresh_database, "REDIS_URL": REDIS_DB,
                        "PROMETHEUS_MULTIPROC_DIR": multiproc},
        port=port, cmd=["python", "-m", "mediagen", "api", "--workers", "2"])
    try:
        served = 60
        for _ in range(served):  # a connection each: the kernel hands them to both processes
            async with httpx.AsyncClient(timeout=10) as once:
                assert (await once.get(f"{url}/livez")).status_code == 200
        pids = {name.rsplit("_", 1)[1] for name in os.listdir(f"{multiproc}/api")}
        assert len(pids) >= 2, pids
        wait_for(lambda: _livez(url) == served, 5, proc, "both processes' requests counted")
        assert _livez(url) == served  # and again, whichever process answers the scrape
    finally:
        proc.stop()


def _livez(url: str) -> float:
    return value(parse(httpx.get(f"{url}/metrics", timeout=5).text),
                 "mediagen_http_requests_total", route="/livez", method="GET", status="200")


def test_model_labels_are_bounded() -> None:
    """A wildcard in ALLOWED_MODELS admits any number of names: past MAX_MODELS they share
    one label, so no caller can make the job metrics' series grow without end."""
    from mediagen.observability import metrics

    names = [f"owner/model-{n}:{n:064x}" for n in range(metrics.MAX_MODELS + 50)]
    labels = [metrics.model_label(name) for name in names]
    assert len(set(labels) - {"other"}) <= metrics.MAX_MODELS
    assert labels[-1] == "other"
    assert metrics.model_label(None) == "default"


MODELS_FILE = """
[models."mediagen/builtin"]
provider = "builtin"
default = true

[models."acme/gpu-fox"]
provider = "cog"
[[models."acme/gpu-fox".endpoints]]
url = "http://127.0.0.1:9"
slots = 2
[[models."acme/gpu-fox".endpoints]]
url = "http://127.0.0.2:9"
slots = 1

[models."acme/gpu-quiet"]
provider = "cog"
[[models."acme/gpu-quiet".endpoints]]
url = "http://127.0.0.3:9"
"""


async def test_the_backlog_per_model(database: str, tmp_path: Path) -> None:
    """Per model: its pending jobs and its oldest one's age (from Postgres, beside the exact
    totals), its Cog slots busy and in service (from the capacity in Redis); every model of
    the models file, at 0 when nothing of it waits.

    On a database of its own: it counts every pending job, and leaves over a thousand behind
    that the module's other tests (which count what the sweeper rescues) must not see.
    (`database` makes the migrated template that fresh databases are copied from.)"""
    fresh_database = await DATABASES.fresh()
    models = tmp_path / "models.toml"
    models.write_text(MODELS_FILE)
    queue = REDIS.fresh()
    redis.Redis.from_url(queue).flushdb()
    proc, url = start_api("metrics-models-api", {
        "DATABASE_URL": fresh_database, "REDIS_URL": queue, "MODELS_FILE": str(models)})
    client = aioredis.from_url(queue)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            foxes = []
            for n in range(3):
                response = await http.post("/api/v1/generate", json={
                    "prompt": f"a gpu fox {n}", "model": "acme/gpu-fox"})
                assert response.status_code == 201, response.text
                foxes.append(response.json()["job_id"])
            await asyncio.sleep(0.5)
            await submit(http, "a builtin owl", width=64, height=64)
            shown = (await scrape(f"{url}/metrics"))[1]
            assert value(shown, "mediagen_jobs", status="pending") == 4  # the total, as before
            pending = {m: value(shown, "mediagen_jobs", status="pending", model=m)
                       for m in ("acme/gpu-fox", "mediagen/builtin", "acme/gpu-quiet")}
            assert pending == {"acme/gpu-fox": 3, "mediagen/builtin": 1, "acme/gpu-quiet": 0}
            assert ("mediagen_jobs", (("model", "acme/gpu-quiet"), ("status", "pending"))) in shown
            age = {m: value(shown, "mediagen_oldest_pending_age_seconds", model=m)
                   for m in ("acme/gpu-fox", "mediagen/builtin", "acme/gpu-quiet")}
            assert age["acme/gpu-fox"] >= age["mediagen/builtin"] + 0.4, age
            assert age["mediagen/builtin"] > 0 and age["acme/gpu-quiet"] == 0
            assert value(shown, "mediagen_oldest_pending_age_seconds") >= age["acme/gpu-fox"]
            slots = {m: (value(shown, "mediagen_slots_busy", model=m),
                         value(shown, "mediagen_slots_total", model=m))
                     for m in ("acme/gpu-fox", "acme/gpu-quiet")}
            assert slots == {"acme/gpu-fox": (0, 3), "acme/gpu-quiet": (0, 1)}
            assert ("mediagen_slots_total", (("model", "mediagen/builtin"),)) not in shown

            # A worker's start step takes a slot for the first fox; the second server is set
            # aside; a fox is canceled.
            settings = Settings(_env_file=None, models_file=models)  # type: ignore[call-arg]
            catalog = load_catalog(settings)
            route = catalog.route("acme/gpu-fox")
            queues = Queues(settings, catalog, client)
            assert await queues.pick(foxes[0]) == Taken(foxes[0], pool_of(route.endpoints[0]))
            await queues.set_down(pool_of(route.endpoints[1]), 60, "test")
            assert (await http.post(f"/api/v1/jobs/{foxes[2]}/cancel")).status_code == 200
            shown = (await scrape(f"{url}/metrics"))[1]
            assert value(shown, "mediagen_jobs", status="pending", model="acme/gpu-fox") == 2
            assert value(shown, "mediagen_slots_busy", model="acme/gpu-fox") == 1
            assert value(shown, "mediagen_slots_total", model="acme/gpu-fox") == 2

            # A model's count stops at PENDING_COUNTED (rows written as the API writes them).
            db = await asyncpg.connect(fresh_database.replace("postgres://", "postgresql://", 1))
            try:
                await db.execute(
                    "INSERT INTO jobs (id, prompt, parameters, outputs, status, provider, model, "
                    "attempt, retry_count, created_at, updated_at) SELECT gen_random_uuid(), "
                    "'many', '{}', '[]', 'pending', 'builtin', 'acme/many', 0, 0, now(), now() "
                    "FROM generate_series(1, $1)", metrics.PENDING_COUNTED + 5)
            finally:
                await db.close()
            shown = (await scrape(f"{url}/metrics"))[1]
            assert value(shown, "mediagen_jobs", status="pending",
                         model="acme/many") == metrics.PENDING_COUNTED
    finally:
        await client.aclose()
        proc.stop()
