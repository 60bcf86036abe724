"""Actual provider cost in the margin report: what allocating one account-month of
reported cost to tenants adds to the report, beside baselines read in the same run.

    make bench-provider-costs   # or: .venv/bin/python bench/provider_costs_bench.py
                                #     [--tenants 500] [--models 20] [--rounds 5]

Data (PostgreSQL, a fresh database `reckon_provider_costs_bench`, set-based): one OpenAI
provider account; M resold aliases (one upstream model each); T tenants each calling every
alias once a day for the 30 days of a month (hourly rollups only, stamped with the account:
T x M x 30 rows); per (day, model) reconciliation rows for the four token classes (settled;
theirs 1 % above ours on output, so 1/101 of the output cost is unattributed) and five
cost rows (input, cached input, output, a cache
write line, a web-search fee without a token type).

Timed per round (median / min / max over the rounds, same process, same data; the
machine, its CPUs, memory and load, printed first):
- served_totals: the rollup read the margin report always made (baseline);
- forwarded_usage: the account's rollup read reconciliation and allocation share;
- provider_costs: forwarded_usage + reconciliation rows + cost rows + the exact allocation;
- margin_report: the whole report (rating every tenant with usage included).
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database  # noqa: E402
from bench.stats import add_database_url, columns, columns_header, machine_banner  # noqa: E402

DB = "reckon_provider_costs_bench"


def timed(rounds: int, fn: Callable[[], Any]) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    import config.urls  # noqa: F401 - load every module now, not mid-measurement
    from billing.costs.provider_costs import EXACT, provider_costs
    from billing.pricing.periods import Period
    from billing.reports import margin_report
    from metering.models import ProviderAccount, ProviderReportFetch
    from metering.reconcile.ours import forwarded_usage
    from metering.selectors import served_totals

    call_command("migrate", verbosity=0)
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    account = ProviderAccount.objects.create(
        name="bench-openai", provider="openai", admin_key_env="BENCH_ADMIN_KEY"
    )
    fetch = ProviderReportFetch.objects.create(
        account=account,
        report="cost",
        run_id="00000000-0000-0000-0000-000000000001",
        query="/v1/organization/costs",
        http_status=200,
        body="{}",
        body_sha256="0" * 64,
        fetched_at=end,
    )
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_tenant (id, name, is_active, created_at) "
            "SELECT md5('t' || n)::uuid, 'bench-' || n, true, now() "
            "FROM generate_series(1, %s) n",
            [args.tenants],
        )
        cur.execute(
            """
            INSERT INTO metering_usagerollup (
                tenant_id, alias, accelerator, api_key_id, provider_account_id, upstream_model,
                hour, shard, requests, flagged_requests, unanswered_requests,
                input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
                reasoning_tokens, serving_cost_usd, reasoning_cost_usd, spend_usd,
                flagged_input_tokens, flagged_cached_input_tokens, flagged_cache_write_tokens,
                flagged_output_tokens, flagged_reasoning_tokens, flagged_spend_usd,
                last_record_id, changed_xid, updated_at)
            SELECT md5('t' || t)::uuid, 'alias-' || m, '', 1, %(account)s, 'model-' || m,
                   %(start)s::timestamptz + (d || ' days')::interval + interval '12 hours',
                   0, 10, 0, 0,
                   1000 + t * 7 + m, 100 + t, 0, 200 + t * 3 + d, 800 + m * 5,
                   (1000 + t * 7 + m) * 0.0000011 + (1000 + t * 3 + d + m * 5) * 0.0000044,
                   (800 + m * 5) * 0.0000044, 0,
                   0, 0, 0, 0, 0, 0,
                   0, 0, now()
            FROM generate_series(1, %(tenants)s) t, generate_series(0, %(models)s - 1) m,
                 generate_series(0, 29) d
            """,
            {"account": account.pk, "start": start, "tenants": args.tenants, "models": args.models},
        )
        # ours from the rollups in OpenAI's terms; theirs = ours, output 1 % above ours
        cur.execute(
            """
            WITH ours AS (
                SELECT (hour AT TIME ZONE 'UTC')::date AS day, upstream_model,
                       sum(input_tokens + cache_write_tokens) AS input_uncached,
                       sum(cached_input_tokens) AS cache_read,
                       sum(output_tokens + reasoning_tokens) AS output
                FROM metering_usagerollup WHERE provider_account_id = %(account)s
                GROUP BY 1, 2)
            INSERT INTO metering_reconciliationrow (
                account_id, day, upstream_model, api_key_id, token_class, ours, theirs, drift,
                relative_drift, status, reasoning, drift_equals_reasoning, explain,
                report_revision, computed_at)
            SELECT %(account)s, day, upstream_model, '', c.name, c.ours, c.theirs,
                   c.theirs - c.ours, 0, c.status, 0, false, '{}', 1, now()
            FROM ours, LATERAL (VALUES
                ('input_uncached', input_uncached, input_uncached, 'matched'),
                ('cache_read', cache_read, cache_read, 'matched'),
                ('output', output, output * 101 / 100, 'drift')) AS c(name, ours, theirs, status)
            """,
            {"account": account.pk},
        )
        cur.execute(
            """
            INSERT INTO metering_providercostbucket (
                account_id, bucket_start, bucket_width, line_item, model, cost_type,
                token_type, service_tier, workspace, amount_text, amount_usd, currency, raw,
                fetch_id, revision, content_hash, changed_at)
            SELECT %(account)s, %(start)s::timestamptz + (d || ' days')::interval, '1d',
                   'model-' || m || ', ' || l, 'model-' || m, '', l, '', '', amt, amt::numeric,
                   'usd',
                   '{}', %(fetch)s, 1, md5(m || l || d), now()
            FROM generate_series(0, %(models)s - 1) m, generate_series(0, 29) d,
                 (VALUES ('input', '12.3456789012345678'), ('cached input', '0.98765'),
                         ('output', '45.6789'), ('cache write', '0.5'),
                         ('web search', '1.25')) AS lines(l, amt)
            """,
            {"account": account.pk, "start": start, "models": args.models, "fetch": fetch.pk},
        )
        cur.execute("ANALYZE")
    print(
        f"data: {args.tenants} tenants x {args.models} models x 30 days = "
        f"{args.tenants * args.models * 30:,} rollup rows, {args.models * 30 * 5:,} cost rows "
        f"(made in {time.perf_counter() - t0:.1f} s)"
    )
    period = Period(start, end)
    day0, day1 = date(2026, 10, 1), date(2026, 11, 1)
    runs = {
        "served_totals (baseline)": lambda: served_totals(start=start, end=end),
        "forwarded_usage": lambda: forwarded_usage(account_id=account.pk, start=day0, end=day1),
        "provider_costs": lambda: provider_costs(start=day0, end=day1),
        "margin_report": lambda: margin_report(period=period),
    }
    results: dict[str, Any] = {}
    print(f"{'':28}{columns_header()}   (seconds, {args.rounds} rounds)")
    for name, fn in runs.items():
        times, results[name] = timed(args.rounds, fn)
        print(f"{name:28}{columns(times, 3)}")
    [costs] = results["provider_costs"]
    amounts = ("12.3456789012345678", "0.98765", "45.6789", "0.5", "1.25")
    with localcontext(EXACT):  # the default context would round these 30-digit sums
        allocated = sum(costs.parts.values(), Decimal(0)) + costs.unattributed
        reported = args.models * 30 * sum(Decimal(a) for a in amounts)
    print(
        f"check: allocated {allocated} = reported {reported}: {allocated == reported}; "
        f"{len(costs.parts):,} (tenant, alias) parts, unattributed {costs.unattributed}"
    )


if __name__ == "__main__":
    main()
