# mediagen: `make run` starts the service, `make test` runs the tests. Both set everything up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-stamp

.PHONY: help setup run api worker beat migrate test lint format lock bench bench-api \
        bench-e2e bench-fair bench-inflight bench-observability bench-prune bench-cog compose-check ping fuzz chaos \
        rehearsal screenshots clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.8
	$(UV) pip install -q --python $(PY) -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with pinned dependencies, .env and the storage folder
	@test -f .env || cp .env-example .env
	@mkdir -p storage/media

run: setup ## API on :8000 + worker + sweeper (embedded Postgres/Redis when unset)
	$(PY) -m mediagen run

api: setup ## The API alone (needs DATABASE_URL/REDIS_URL, or a running `make run`)
	$(PY) -m mediagen api

worker: setup ## A Celery worker alone
	$(PY) -m mediagen worker

beat: setup ## The sweeper schedule alone (Celery beat)
	$(PY) -m mediagen beat

migrate: setup ## Apply database migrations
	$(PY) -m mediagen migrate

ping: setup ## Every worker answering over the broker (celery inspect ping), then this host's probe
	$(VENV)/bin/celery -A mediagen.worker inspect ping
	$(PY) -m mediagen worker-check

test: setup ## The whole test suite against real Postgres, Redis and Celery
	scripts/ensure-services.sh
	scripts/ensure-tools.sh
	$(PY) -m pytest

fuzz: setup ## schemathesis over the OpenAPI schema with a random seed (a live API on :8000)
	$(VENV)/bin/schemathesis --config-file tests/fuzz/schemathesis.toml run \
	  http://127.0.0.1:8000/openapi.json --max-examples 500

chaos: setup ## Crash, outage and fault scenarios against real processes (not part of `make test`)
	$(PY) -m tests.chaos

rehearsal: setup ## Multi-host rehearsal with faults on loopback addresses (root; not part of `make test`)
	scripts/ensure-rehearsal-tools.sh
	$(PY) -m tests.rehearsal $(ARGS)

screenshots: setup ## The web page's browser tests, copying their screenshots to docs/images/
	scripts/ensure-services.sh
	scripts/ensure-tools.sh
	MEDIAGEN_SCREENSHOTS=docs/images $(PY) -m pytest tests/web -q

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check mediagen
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format mediagen tests bench
	$(VENV)/bin/ruff check --fix .

lock: ## Re-pin constraints.txt from pyproject.toml
	$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.11 -o constraints.txt

bench: setup ## Every benchmark below, then one table of their figures
	$(PY) bench/all.py

bench-api: setup ## Submit and status against a bare-stack baseline (wrk); ARGS="--preload 1000000"
	$(PY) bench/api.py $(ARGS)

bench-e2e: setup ## Throughput and latency end to end, built-in generator, one worker
	$(PY) bench/e2e.py $(ARGS)

bench-observability: setup ## Submit and status with metrics and logs on, against them off
	$(PY) bench/api.py --versus LOG_LEVEL=WARNING --versus METRICS_ENABLED=false \
	  --versus ACCESS_LOG=false $(ARGS)

bench-fair: setup ## Key A submits 10,000 jobs, then key B 10: B's wait to start, A's throughput
	$(PY) bench/fair.py $(ARGS)

bench-inflight: setup ## 1,000 jobs at once against a fake Replicate with 5 s latency
	$(PY) bench/inflight.py $(ARGS)

bench-prune: setup ## Pruning 1,000,000 old job rows while submit and status are served
	$(PY) bench/prune.py $(ARGS)

bench-cog: setup ## One-slot Cog server, 100 jobs: slot utilization and handoff gaps; ARGS="--versus-tree DIR"
	$(PY) bench/cog.py $(ARGS)

compose-check: ## Validate docker-compose.yml without a Docker engine
	$(PY) scripts/check_compose.py

clean:
	rm -rf .mediagen storage .pytest_cache .mypy_cache .ruff_cache
