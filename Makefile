# The README's two commands are `make run` and `make test`; everything else supports them.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := .tools/bin/uv
PY := .venv/bin/python
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: setup run test lint bench bench-stream bench-workers bench-billing bench-usage bench-console bench-control bench-control-cluster bench-ledger bench-archive bench-reconcile bench-provider-costs bench-cpu bench-lookup bench-compare services chromium chaos

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock .tools/bin/uv
	$(UV) sync --frozen --python python3
	touch $@

setup: .venv/.synced

# Embedded default: SQLite, Celery tasks in-process, the built-in simulator as upstream.
# Other ports: make run QUICKSTART_ARGS='--port 8001 --simulator-port 8101'
QUICKSTART_ARGS ?=
run: setup
	$(PY) manage.py quickstart $(QUICKSTART_ARGS)

services:
	bash .ci/services

# Debian's Chromium and fonts for the browser tests (tests/browser); skipped when present.
chromium:
	bash .ci/chromium

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run

# DATABASE_REPLICA_URL: the replica tests get a separate test database of their own.
# The browser tests (tests/browser, marked browser and e2e) run here too, in Chromium.
# Two pytest-xdist workers, each with its own test database, Redis databases (REDIS_URL's
# number and the next) and spool directory (tests/conftest.py), tests handed out one by one.
test: setup services chromium
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(MAKE) --no-print-directory lint
	DATABASE_URL=$(TEST_DATABASE_URL) DATABASE_REPLICA_URL=$(TEST_DATABASE_URL) \
		REDIS_URL=$(TEST_REDIS_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		.venv/bin/pytest -q -n 2 --dist load

bench: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/proxy_bench.py

bench-billing: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/billing_bench.py

# The usage API over a tenant-month of 10M records: make bench-usage USAGE_BENCH_ARGS='--records 1000000'
USAGE_BENCH_ARGS ?=
bench-usage: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/usage_bench.py $(USAGE_BENCH_ARGS)

# Console page times over a tenant-month of records: make bench-console CONSOLE_BENCH_ARGS='--records 10000000'
CONSOLE_BENCH_ARGS ?=
bench-console: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/console_bench.py $(CONSOLE_BENCH_ARGS)

bench-control: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/control_bench.py

# Actual provider cost in the margin report: make bench-provider-costs PROVIDER_COSTS_BENCH_ARGS='--tenants 1000'
bench-provider-costs: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/provider_costs_bench.py $(PROVIDER_COSTS_BENCH_ARGS)

# Archive: export, verify, drop and restore of a ledger month, in a scratch database.
bench-archive: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/archive_bench.py

# The ledger's capacity: group commit, COPY and bytes per record, in a scratch database.
bench-ledger: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/ledger_bench.py

# Reconciliation: one provider account-month recomputed, beside the bare rollup read.
bench-reconcile: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/reconcile_bench.py

# Spend control on a 3-node Redis Cluster (started by the bench) against one Redis.
bench-control-cluster: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/control_cluster_bench.py

# What loading a caller's context costs per key (CPU, wall, queries): make bench-lookup LOOKUP_BENCH_ARGS='--tenants 50 --keys 20'
bench-lookup: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) bench/lookup_bench.py $(LOOKUP_BENCH_ARGS)

bench-cpu: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/cpu_bench.py

# Paced streams (2,000 and ~10,000 at once) through one server process, beside the bare
# pass-through: make bench-stream STREAM_BENCH_ARGS='--streams 2000 --rounds 5'
STREAM_BENCH_ARGS ?=
bench-stream: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/stream_bench.py $(STREAM_BENCH_ARGS)

# Throughput with 1 and 2 server processes (serve --workers), interleaved in one run.
bench-workers: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/workers_bench.py

# Two commits side by side in one interleaved run: make bench-compare OLD=<rev> NEW=HEAD BENCH=cpu
OLD ?= HEAD~1
NEW ?= HEAD
BENCH ?= proxy
bench-compare: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) bench/compare.py $(OLD) $(NEW) --bench $(BENCH)

# The fault suite (tests/chaos): its own PostgreSQL, Redis and processes on free loopback
# ports, stopped and killed on purpose; the shared services are never touched. Each
# scenario prints its figures; any violated guarantee fails the run.
chaos: setup
	.venv/bin/pytest tests/chaos -m chaos -s -p no:cacheprovider
