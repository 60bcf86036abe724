"""Rating benchmark: the live invoice preview for one tenant with 10 million usage records
in its period, and rating every one of 10,000 tenants for a month.

    make bench-billing     # or: .venv/bin/python bench/billing_bench.py [--records 10000000]

Data generation (in PostgreSQL, set-based, into a fresh database `reckon_billing_bench`):
- one "big" tenant: N usage records (default 10,000,000) spread evenly over the month
  across 4 aliases, token counts derived from the row number (deterministic), inserted
  with generate_series; its hourly rollups are then built from those raw rows by the same
  aggregation the ledger performs on insert, and checked against a raw SUM;
- 9,999 other tenants: hourly rollup rows only (3 aliases x 30 days at noon), since what
  rating reads is rollups; every tenant is subscribed to one graduated/per-unit plan.

Timed: the big tenant's preview `--rounds` times (service call, then the HTTP endpoint),
rating every tenant `--rate-rounds` times (a read), and the month close once (it closes
the month: one round, said so). The machine (CPUs, memory, load) is printed first; every
figure is a median with its min and max, and each target is judged on the median.
"""

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database  # noqa: E402
from bench.stats import add_database_url, machine_banner, spread, target_line  # noqa: E402

DB = "reckon_billing_bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20, help="timed previews of each kind")
    parser.add_argument("--rate-rounds", type=int, default=3, help="timed ratings of all tenants")
    parser.add_argument("--skip-close", action="store_true", help="skip the month-close run")
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    import config.urls  # noqa: F401 - load every module now, not mid-measurement
    from billing.period_rating import invoice_preview, rate_all_tenants
    from billing.plans import plan_create, plan_version_create, plan_version_publish
    from billing.pricing.periods import Period
    from metering.ledger.partitions import partition_create
    from metering.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    partition_create(start)  # the ledger's month (PostgreSQL partitions; made ahead from now)
    plan = plan_create(code="bench", name="Bench")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            base_fee=Decimal(20),
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.10")},
                {
                    "token_class": "cache_read",
                    "charge_model": "per_unit",
                    "unit_price": Decimal("0.275"),
                },
                {
                    "token_class": "output",
                    "charge_model": "per_unit",
                    "unit_price": Decimal("4.40"),
                },
                {
                    "token_class": "reasoning",
                    "charge_model": "graduated",
                    "included_tokens": 1_000_000,
                    "tiers": [
                        {"up_to": Decimal(100), "unit_price": Decimal("4.40")},
                        {"up_to": Decimal(10_000), "unit_price": Decimal("3.50")},
                        {"up_to": None, "unit_price": Decimal("2.75"), "flat_fee": Decimal(100)},
                    ],
                },
            ],
        )
    )
    big = tenant_create(name="big")
    key = api_key_create(tenant=big).api_key
    t = time.perf_counter()
    with connection.cursor() as cur:
        # tenants, keys and subscriptions for everyone else, set-based
        cur.execute(
            "INSERT INTO metering_tenant (id, name, is_active, created_at)"
            " SELECT gen_random_uuid(), 'tenant-' || g, true, now() FROM generate_series(2, %s) g",
            [args.tenants],
        )
        cur.execute(
            "INSERT INTO billing_subscription (tenant_id, plan_version_id, starts_at, anchor_day, created_at)"
            " SELECT id, %s, %s, 1, now() FROM metering_tenant",
            [version.pk, start],
        )
        seconds = int((end - start).total_seconds())
        cur.execute(
            "INSERT INTO metering_usagerecord (request_id, tenant_id, api_key_id, alias, provider,"
            " upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id,"
            " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,"
            " reasoning_source, flags, raw_usage, client_disconnected, ttft_us, latency_us,"
            " started_at, finished_at, recorded_at)"
            " SELECT gen_random_uuid(), %s, %s, (ARRAY['r1','r2','r3','r4'])[g %% 4 + 1], 'openai',"
            " 'sim', '', 'chat.completions', false, 'completed', 200, '',"
            " 50 + g %% 400, (g %% 7) * 64, 0, 10 + g %% 90, (g * 7919) %% 2000, 'reported', '[]'::jsonb,"
            " NULL, false, NULL, 1000,"
            " %s::timestamptz + make_interval(secs => (g::float8 * %s / %s)),"
            " %s::timestamptz + make_interval(secs => (g::float8 * %s / %s)), now()"
            " FROM generate_series(0::bigint, %s - 1) g",
            [
                big.pk,
                key.pk,
                start,
                seconds,
                args.records,
                start,
                seconds,
                args.records,
                args.records,
            ],
        )
        generated = time.perf_counter() - t
        cur.execute(
            "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id, hour, shard,"
            " requests, flagged_requests, input_tokens, cached_input_tokens, cache_write_tokens,"
            " output_tokens, reasoning_tokens, serving_cost_usd, reasoning_cost_usd, spend_usd,"
            " last_record_id, updated_at)"
            " SELECT tenant_id, alias, accelerator, api_key_id, date_trunc('hour', started_at, 'UTC'), 0,"
            " count(*), 0, sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens),"
            " sum(output_tokens), sum(reasoning_tokens), 0, 0, 0, max(id), now()"
            " FROM metering_usagerecord GROUP BY 1, 2, 3, 4, 5"
        )
        cur.execute(
            "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id, hour, shard,"
            " requests, flagged_requests, input_tokens, cached_input_tokens, cache_write_tokens,"
            " output_tokens, reasoning_tokens, serving_cost_usd, reasoning_cost_usd, spend_usd,"
            " last_record_id, updated_at)"
            " SELECT t.id, a, '', 0, %s::timestamptz + make_interval(days => d, hours => 12), 0, 100, 0,"
            " 40000 + d * 10, 5000, 0, 20000 + d, 90000 + d * 100, 0, 0, 0, 0, now()"
            " FROM metering_tenant t, unnest(ARRAY['r1','r2','r3']) a, generate_series(0, 29) d"
            " WHERE t.id <> %s",
            [start, big.pk],
        )
        cur.execute("ANALYZE")
        prepared = time.perf_counter() - t
        t = time.perf_counter()
        cur.execute(
            "SELECT count(*), sum(reasoning_tokens) FROM metering_usagerecord WHERE tenant_id = %s"
            " AND started_at >= %s AND started_at < %s",
            [big.pk, start, end],
        )
        raw_count, raw_reasoning = cur.fetchone()
        raw_scan = time.perf_counter() - t
        cur.execute(
            "SELECT sum(requests), sum(reasoning_tokens), count(*) FROM metering_usagerollup WHERE tenant_id = %s",
            [big.pk],
        )
        rolled_requests, rolled_reasoning, rollup_rows = cur.fetchone()
    assert (raw_count, raw_reasoning) == (rolled_requests, rolled_reasoning), (
        "rollups disagree with raw records"
    )

    as_of = datetime(2026, 10, 31, 23, tzinfo=UTC)
    service_times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        rating = invoice_preview(tenant_id=big.pk, as_of=as_of)
        service_times.append(time.perf_counter() - t)
    # the HTTP endpoint, through Django's full stack (no network)
    from unittest import mock

    client = Client(
        HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=big).raw_key}"
    )
    http_times = []
    with mock.patch("django.utils.timezone.now", return_value=as_of):
        for _ in range(args.rounds):
            t = time.perf_counter()
            response = client.get("/api/v1/invoices/upcoming")
            http_times.append(time.perf_counter() - t)
    assert response.status_code == 200, response.content
    assert response.json()["total_minor"] == rating.total_minor

    rate_all = []
    for _ in range(args.rate_rounds):
        t = time.perf_counter()
        totals = rate_all_tenants(period=Period(start, end))
        rate_all.append(time.perf_counter() - t)
        assert len(totals) == args.tenants
        assert totals[big.pk] == rating.total_minor, "the bulk rating disagrees with the preview"

    print()
    print("Billing benchmark (PostgreSQL; data: see module docstring); median (min, max)")
    print(
        f"  data: {raw_count:,} usage records for one tenant ({rollup_rows:,} hourly rollup rows), "
        f"{args.tenants:,} tenants; generated in {generated:.0f}s, ready in {prepared:.0f}s"
    )
    print(f"  raw scan of the big tenant's month (for scale only): {raw_scan * 1000:.0f} ms")
    print(
        f"  invoice preview, big tenant, service call: {spread(service_times, 'ms', 1, scale=1000)}"
    )
    print(
        "  invoice preview, big tenant, GET /api/v1/invoices/upcoming:"
        f" {spread(http_times, 'ms', 1, scale=1000)}"
    )
    print(f"  rating all {args.tenants:,} tenants for the month: {spread(rate_all, 's', 3)}")
    print(
        "  " + target_line("invoice preview (service call)", service_times, "<", 100, "ms", 1, 1000)
    )
    print("  " + target_line(f"rating all {args.tenants:,} tenants", rate_all, "<", 30, "s", 3))
    print(f"  big tenant's preview total: {rating.total_minor / 100:.2f} {rating.currency}")
    if not args.skip_close:
        close_month(args, big.pk, rating.total_minor)


def close_month(args, big_tenant_id, expected_big_total: int) -> None:  # type: ignore[no-untyped-def]
    """The month-close figure: seconds until one real Celery worker (one process, solo
    pool, Redis broker) has closed the month for every tenant (target < 60 s): beat's
    fan-out (`close_due_periods`), then one `close_periods` task per batch of
    RECKON_CLOSE_BATCH_SIZE tenants, each building and finalizing its invoices from
    rollups."""
    from billing.models import Invoice
    from config.celery import app

    broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2")
    app.conf.broker_url = broker
    app.conf.task_always_eager = False
    env = {**os.environ, "CELERY_BROKER_URL": broker, "CELERY_TASK_ALWAYS_EAGER": "false"}
    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "solo",
            "-Q",
            "default,billing,webhooks",
            "--loglevel",
            "error",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        time.sleep(3)  # worker start-up is not part of the figure
        t = time.perf_counter()
        app.send_task(
            "billing.tasks.close_due_periods",
            kwargs={"as_of": "2026-11-02T01:00:00+00:00"},
            queue="billing",
        )
        while Invoice.objects.filter(status="finalized").count() < args.tenants:
            if worker.poll() is not None:
                sys.exit("the worker died")
            time.sleep(0.5)
        elapsed = [time.perf_counter() - t]  # one round: the close is not repeatable
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    numbers = set(Invoice.objects.values_list("number", flat=True))
    assert len(numbers) == args.tenants == Invoice.objects.count(), (
        "one invoice per tenant, numbered"
    )
    big = Invoice.objects.get(tenant_id=big_tenant_id)
    assert big.total_minor == expected_big_total, (big.total_minor, expected_big_total)
    print(
        f"  closing the month for {args.tenants:,} tenants (one worker process, Redis broker):"
        f" {spread(elapsed, 's', 1)}; {len(numbers):,} invoices, numbers"
        f" {min(numbers)}..{max(numbers)}; big tenant's invoice = its preview"
    )
    print(
        "  "
        + target_line(f"closing the month for {args.tenants:,} tenants", elapsed, "<", 60, "s", 1)
    )


if __name__ == "__main__":
    main()
