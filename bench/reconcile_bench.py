"""Reconciliation benchmark: recomputing one provider account's month of rows.

    make bench-reconcile     # or: .venv/bin/python bench/reconcile_bench.py [--tenants 1000]

Data (PostgreSQL, set-based, in a fresh database `reckon_reconcile_bench`): one OpenAI
account, 20 routes (one upstream model and declared key each) and N tenants (default
1,000), each calling 3 of the 20 models every hour of October 2026: N x 3 x 720 hourly
rollup rows stamped with the account (2.16 M at the default). The report is built from
the same rollups as 1h usage buckets per model and key (20 x 720 = 14,400 buckets), then
skewed so the rows are not all alike: one model's report drops reasoning (output rows
drift, so `explain` runs for them), and a key no route declares bills usage on 3 days
(missing-in-ledger rows).

Figures, median / min / max over `--rounds` rounds, in the same run, after the machine
(CPUs, memory, load):
- baseline: `forwarded_usage` for the month, the bare rollup read reconciliation starts from;
- recompute: `reconcile_account_days` for the month's 31 days when nothing changed (the
  hourly run's and the command's steady state: every row compared, none written);
- the same two for the hourly run's share, the 4 days of the settling window;
- and once each: the first run (every row created), and a run where the tolerance change
  rewrites the drifting rows.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database  # noqa: E402
from bench.stats import add_database_url, machine_banner, spread  # noqa: E402

DB = "reckon_reconcile_bench"
MODELS = 20
MODELS_PER_TENANT = 3


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def ms(times: list[float]) -> str:
    return spread(times, "ms", 1, scale=1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from metering.ledger.partitions import partition_create
    from metering.models import Alias, ProviderAccount, ReconciliationRow, Route
    from metering.reconcile.ours import forwarded_usage
    from metering.reconcile.service import reconcile_account_days

    call_command("migrate", verbosity=0)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    partition_create(start)
    account = ProviderAccount.objects.create(
        name="bench", provider="openai", admin_key_env="BENCH_ADMIN_KEY"
    )
    for m in range(MODELS):
        Route.objects.create(
            alias=Alias.objects.get_or_create(name=f"m{m}")[0],
            provider="openai",
            base_url="https://api.openai.com/v1",
            upstream_model=f"gpt-m{m}",
            provider_account=account,
            upstream_key_id=f"key_{m}",
        )
    t = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_tenant (id, name, is_active, created_at)"
            " SELECT gen_random_uuid(), 'tenant-' || g, true, now() FROM generate_series(1, %s) g",
            [args.tenants],
        )
        # each tenant: MODELS_PER_TENANT models, every hour of the month
        cur.execute(
            "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id,"
            " provider_account_id, upstream_model, hour, shard, requests, flagged_requests,"
            " unanswered_requests, input_tokens, cached_input_tokens, cache_write_tokens,"
            " output_tokens, reasoning_tokens, serving_cost_usd, reasoning_cost_usd, spend_usd,"
            " last_record_id, updated_at)"
            " SELECT t.id, 'm' || m, '', 1, %s, 'gpt-m' || m, %s::timestamptz + make_interval(hours => h),"
            " 0, 3 + (n + h) %% 5, 0, (n + h) %% 7 / 6, 2000 + (n * 31 + h) %% 900,"
            " (n + h) %% 3 * 256, 0, 300 + (n + h) %% 200, 900 + (n * 7 + h) %% 1500,"
            " 0.01, 0.005, 0.02, 0, now()"
            " FROM (SELECT id, row_number() OVER (ORDER BY name) n FROM metering_tenant) t,"
            " generate_series(0, %s - 1) j,"
            " LATERAL (SELECT ((t.n * 7 + j * 3) %% %s)::int m) pick,"
            " generate_series(0, 24 * 31 - 1) h",
            [account.pk, start, MODELS_PER_TENANT, MODELS],
        )
        cur.execute(
            "INSERT INTO metering_providerreportfetch (account_id, report, run_id, query,"
            " http_status, body, body_sha256, fetched_at)"
            " VALUES (%s, 'usage', gen_random_uuid(), '/organization/usage/completions', 200,"
            " '{}', repeat('0', 64), now()) RETURNING id",
            [account.pk],
        )
        fetch_id = cur.fetchone()[0]
        # the report: the same usage, per model, declared key and hour
        cur.execute(
            "INSERT INTO metering_providerusagebucket (account_id, bucket_start, bucket_width,"
            " model, api_key_id, service_tier, workspace, requests, input_uncached_tokens,"
            " cache_read_tokens, cache_write_tokens, output_tokens, raw, fetch_id, revision,"
            " content_hash, changed_at)"
            " SELECT %s, hour, '1h', upstream_model, 'key_' || substr(upstream_model, 6), '', '',"
            " sum(requests + flagged_requests - unanswered_requests),"
            " sum(input_tokens + cache_write_tokens), sum(cached_input_tokens), NULL,"
            " sum(output_tokens + reasoning_tokens"
            "     - CASE WHEN upstream_model = 'gpt-m0' THEN reasoning_tokens ELSE 0 END),"
            " '{}'::jsonb, %s, 1, '', hour + interval '1 hour'"  # imported an hour later
            " FROM metering_usagerollup WHERE provider_account_id = %s GROUP BY hour, upstream_model",
            [account.pk, fetch_id, account.pk],
        )
        cur.execute(
            "INSERT INTO metering_providerusagebucket (account_id, bucket_start, bucket_width,"
            " model, api_key_id, service_tier, workspace, requests, input_uncached_tokens,"
            " cache_read_tokens, cache_write_tokens, output_tokens, raw, fetch_id, revision,"
            " content_hash, changed_at)"
            " SELECT %s, %s::timestamptz + make_interval(days => d, hours => 3), '1h', 'gpt-m1',"
            " 'key_leaked', '', '', 7, 50000, 0, NULL, 9000, '{}'::jsonb, %s, 1, '',"
            " %s::timestamptz + make_interval(days => d, hours => 4)"
            " FROM unnest(ARRAY[4, 11, 18]) d",
            [account.pk, start, fetch_id, start],
        )
        cur.execute("ANALYZE")
        cur.execute(
            "SELECT count(*) FROM metering_usagerollup WHERE provider_account_id = %s",
            [account.pk],
        )
        rollup_rows = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM metering_providerusagebucket")
        buckets = cur.fetchone()[0]
    prepared = time.perf_counter() - t

    days = [start.date() + timedelta(days=n) for n in range(31)]
    now = datetime(2026, 11, 10, tzinfo=UTC)  # every day of October settled

    def month_read() -> list[object]:
        return forwarded_usage(
            account_id=account.pk, start=date(2026, 10, 1), end=date(2026, 11, 1)
        )

    def month_reconcile() -> object:
        return reconcile_account_days(account=account, days=days, now=now)

    first_s, first = timed(month_reconcile)
    rows = ReconciliationRow.objects.filter(account=account)
    by_status: dict[str, int] = {}
    for status in rows.values_list("status", flat=True):
        by_status[status] = by_status.get(status, 0) + 1
    forwarded_rows = len(month_read())
    baseline, recompute = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same machine
        baseline.append(timed(month_read)[0])
        seconds, result = timed(month_reconcile)
        assert result.changed_days == (), "a recompute of unchanged data wrote rows"  # type: ignore[attr-defined]
        recompute.append(seconds)
    # the hourly run's share: the settling window (3 closed days and today)
    window = days[-4:]

    def window_read() -> list[object]:
        return forwarded_usage(account_id=account.pk, start=window[0], end=date(2026, 11, 1))

    def window_reconcile() -> object:
        return reconcile_account_days(account=account, days=window, now=now)

    window_baseline, window_recompute = [], []
    for _ in range(args.rounds):
        window_baseline.append(timed(window_read)[0])
        window_recompute.append(timed(window_reconcile)[0])
    settings.RECKON_RECON_TOLERANCE_RELATIVE = Decimal("10")  # the drifting rows now match
    rewrite_s, rewrite = timed(month_reconcile)

    print()
    print("Reconciliation benchmark (PostgreSQL; data: see docstring)")
    print(
        f"  data: {args.tenants:,} tenants x {MODELS_PER_TENANT} of {MODELS} models x 744 hours ="
        f" {rollup_rows:,} rollup rows, {buckets:,} usage buckets; ready in {prepared:.0f} s"
    )
    print(
        f"  one account-month: {forwarded_rows:,} forwarded rows (day x model x tenant x alias),"
        f" {rows.count():,} reconciliation rows {dict(sorted(by_status.items()))}"
    )
    print(f"  baseline forwarded_usage (bare rollup read): {ms(baseline)}")
    print(f"  reconcile_account_days, nothing changed:      {ms(recompute)}")
    print(
        f"  first run (every row created): {ms([first_s])} ({first.created:,} rows);"  # type: ignore[attr-defined]
        f" rewrite after a tolerance change: {ms([rewrite_s])}"
        f" ({rewrite.updated:,} rows updated)"  # type: ignore[attr-defined]
    )
    ratio = statistics.median(recompute) / statistics.median(baseline)
    print(f"  recompute / baseline (medians): {ratio:.2f}x")
    print(f"  the hourly run's 4 days: baseline  {ms(window_baseline)}")
    print(f"                           reconcile {ms(window_recompute)}")


if __name__ == "__main__":
    main()
