"""Archive benchmark: one ledger month of N records exported, verified, dropped and
restored (metering.ledger.archive), round after round.

    make bench-archive     # or: .venv/bin/python bench/archive_bench.py [--records 1000000] [--rounds 3]

Data (PostgreSQL, set-based, into a fresh database `reckon_archive_bench`, migrated, so
the ledger is partitioned by month): N usage records in 2026-09 over 20 tenants and 4
aliases, token counts derived from the row number, a provider usage object in
`raw_usage`, exact serving cost and spend, one record in a hundred flagged; their hourly
rollups built by the same aggregation the ledger performs on insert.

Each round: export (COPY out, Parquet zstd, store), verify (files read back from the
store, checksums, sums; the database's SQL sums; the rollups), drop (recheck under lock,
DETACH + DROP), restore (partition, COPY in with ids, recheck). Printed: seconds per
million records for export and verify, seconds for drop and restore, min / median / max
over the rounds, beside a same-run baseline: a bare `COPY (SELECT * FROM the month) TO
STDOUT` into nothing (what reading the month alone costs) and an `INSERT ... SELECT` of
the month into a copy of the table with its indexes and CHECKs (what writing it alone
costs). Bytes per record: the Parquet
files, and the month's partition in PostgreSQL (heap, TOAST and indexes). The machine
(CPUs, memory, load) is printed first; every figure is a median with its min and max.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database, scratch_drop  # noqa: E402
from bench.stats import add_database_url, machine_banner, spread  # noqa: E402

DB = "reckon_archive_bench"
MONTH = datetime(2026, 9, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--archive-url", default="", help="file:///dir or s3://bucket/prefix (default: a temp dir)"
    )
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    server = scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    workdir = tempfile.TemporaryDirectory(prefix="reckon-archive-bench-")
    os.environ["RECKON_LEDGER_ARCHIVE_URL"] = args.archive_url or Path(workdir.name).as_uri()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from metering.ledger.archive import (
        archived_usage_grouped,
        archived_usage_rows,
        ledger_month_drop,
        ledger_month_export,
        ledger_month_restore,
        ledger_month_verify,
    )
    from metering.ledger.partitions import partition_create, partition_name
    from metering.models import LedgerArchive
    from metering.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    partition_create(MONTH)
    tenants = [tenant_create(name=f"tenant-{n}") for n in range(20)]
    keys = [api_key_create(tenant=t).api_key for t in tenants]
    seconds = 30 * 86400
    t = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_usagerecord (request_id, tenant_id, api_key_id, alias, provider,"
            " upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id,"
            " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,"
            " reasoning_source, flags, raw_usage, cost_rate_id, serving_cost_usd, spend_usd,"
            " reasoning_cost_usd, client_disconnected, ttft_us, latency_us,"
            " started_at, finished_at, recorded_at)"
            " SELECT gen_random_uuid(), (%s::uuid[])[g %% 20 + 1], (%s::int8[])[g %% 20 + 1],"
            " (ARRAY['r1','r2','r3','r4'])[g %% 4 + 1], 'openai', 'sim-large', 'h100',"
            " 'chat.completions', g %% 3 = 0, 'completed', 200, 'chatcmpl-' || md5(g::text),"
            " 50 + g %% 400, (g %% 7) * 64, 0, 10 + g %% 90, (g * 7919) %% 2000, 'reported',"
            " CASE WHEN g %% 100 = 99 THEN '[\"reasoning_exceeds_output\"]'::jsonb ELSE '[]'::jsonb END,"
            " jsonb_build_object('prompt_tokens', 50 + g %% 400, 'completion_tokens',"
            "   10 + g %% 90 + (g * 7919) %% 2000, 'completion_tokens_details',"
            "   jsonb_build_object('reasoning_tokens', (g * 7919) %% 2000)),"
            " NULL, ((g %% 997) * 0.000000123456789012345678)::numeric(44,24),"
            " ((g %% 991) * 0.000001234567890123456789)::numeric(44,24),"
            " ((g %% 983) * 0.000000012345678901234567)::numeric(44,24),"
            " false, 150000 + g %% 1000, 900000 + g %% 5000,"
            " %s::timestamptz + make_interval(secs => (g::float8 * %s / %s)),"
            " %s::timestamptz + make_interval(secs => (g::float8 * %s / %s) + 1), now()"
            " FROM generate_series(0::bigint, %s - 1) g",
            [
                [str(x.pk) for x in tenants],
                [k.pk for k in keys],
                MONTH,
                seconds,
                args.records,
                MONTH,
                seconds,
                args.records,
                args.records,
            ],
        )
        tokens = (
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
        money = ("serving_cost_usd", "reasoning_cost_usd", "spend_usd")
        cur.execute(
            "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id, hour,"  # noqa: S608
            " shard, requests, flagged_requests, "
            + ", ".join([*tokens, *money, *(f"flagged_{c}" for c in (*tokens, "spend_usd"))])
            + ", last_record_id, changed_xid, updated_at)"
            " SELECT tenant_id, alias, accelerator, api_key_id, date_trunc('hour', started_at, 'UTC'),"
            " 0, count(*) FILTER (WHERE flags = '[]'), count(*) FILTER (WHERE flags <> '[]'), "
            + ", ".join(
                [
                    *(
                        f"coalesce(sum({c}) FILTER (WHERE flags = '[]'), 0)"
                        for c in (*tokens, *money)
                    ),
                    *(
                        f"coalesce(sum({c}) FILTER (WHERE flags <> '[]'), 0)"
                        for c in (*tokens, "spend_usd")
                    ),
                ]
            )
            + ", max(id), 0, now() FROM metering_usagerecord GROUP BY 1, 2, 3, 4, 5"
        )
        cur.execute("ANALYZE")
        cur.execute("SELECT pg_total_relation_size(%s)", [partition_name(MONTH)])
        (pg_bytes,) = cur.fetchone()
    prepared = time.perf_counter() - t
    million = 1_000_000 / args.records

    def timed(work: Callable[[], object]) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    def bare_copy() -> None:
        raw = connection.connection
        with raw.cursor() as cursor:
            query = f'COPY (SELECT * FROM "{partition_name(MONTH)}" ORDER BY id) TO STDOUT'  # noqa: S608
            with cursor.copy(query) as copy:
                for _ in copy:
                    pass

    def bare_write() -> None:
        """The same rows written by PostgreSQL alone into a table with the ledger's
        indexes and CHECKs (no partition routing): what a restore cannot go below."""
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE bench_write (LIKE metering_usagerecord INCLUDING DEFAULTS"
                " INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            )
            cursor.execute(f'INSERT INTO bench_write SELECT * FROM "{partition_name(MONTH)}"')  # noqa: S608
            cursor.execute("DROP TABLE bench_write")

    baseline, written, export, verify, drop, restore = [], [], [], [], [], []
    parquet_bytes = 0

    import pyarrow

    def peak_mb() -> str:
        arrow = pyarrow.default_memory_pool().max_memory() // (1 << 20)
        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} (Arrow {arrow})"

    peaks = [("set-up", peak_mb())]
    for _ in range(args.rounds):
        baseline.append(timed(bare_copy))
        written.append(timed(bare_write))
        peaks.append(("baselines", peak_mb()))
        export.append(timed(lambda: ledger_month_export(month=MONTH)))
        peaks.append(("export", peak_mb()))
        verify.append(timed(lambda: ledger_month_verify(month=MONTH)))
        peaks.append(("verify", peak_mb()))
        drop.append(timed(lambda: ledger_month_drop(month=MONTH)))
        restore.append(timed(lambda: ledger_month_restore(month=MONTH)))
        peaks.append(("restore", peak_mb()))
        parquet_bytes = sum(
            f["bytes"] for f in LedgerArchive.objects.get(month=MONTH).manifest["files"]
        )

    # Reads of a dropped month (drop it once more): a recompute's read of one tenant's
    # whole month, and usage analytics' read of one tenant's edge hour, from the archive.
    ledger_month_export(month=MONTH)
    ledger_month_verify(month=MONTH)
    ledger_month_drop(month=MONTH)
    month_read, hour_read = [], []
    hour = MONTH + timedelta(days=14, hours=9)
    for _ in range(args.rounds):
        month_read.append(
            timed(
                lambda: archived_usage_rows(
                    month=MONTH,
                    start=MONTH,
                    end=MONTH + timedelta(days=30),
                    up_to_record_id=2**62,
                    tenant_ids=[tenants[0].pk],
                )
            )
        )
        hour_read.append(
            timed(
                lambda: archived_usage_grouped(
                    month=MONTH,
                    tenant_id=tenants[0].pk,
                    start=hour + timedelta(minutes=20),
                    end=hour + timedelta(hours=1),
                    api_key_id=None,
                    alias=None,
                    key="alias",
                    bucket=None,
                )
            )
        )
    peaks.append(("reads", peak_mb()))

    print()
    print(
        f"Archive benchmark (PostgreSQL, store: "
        f"{'temp dir' if not args.archive_url else args.archive_url}), {datetime.now(UTC):%Y-%m-%d}"
    )
    print(f"  data: {args.records:,} records in one month partition, ready in {prepared:.0f}s")
    print(f"  {args.rounds} rounds; each figure: median (min, max)")
    print(f"  baseline, bare COPY of the month:  {spread(baseline, 's per 1M', scale=million)}")
    print(
        "  baseline, INSERT..SELECT of the month into a copy with its indexes:"
        f" {spread(written, 's per 1M', scale=million)}"
    )
    print(f"  export:                            {spread(export, 's per 1M', scale=million)}")
    print(f"  verify:                            {spread(verify, 's per 1M', scale=million)}")
    print(f"  drop, recheck + DETACH + DROP:     {spread(drop, 'ms', 1, scale=1000)}")
    print(f"  restore, COPY in + recheck:        {spread(restore, 's')}")
    print(f"  restore:                           {spread(restore, 's per 1M', scale=million)}")
    print(
        f"  bytes per record: Parquet zstd {parquet_bytes / args.records:.1f},"
        f" PostgreSQL partition (heap+TOAST+indexes) {pg_bytes / args.records:.1f}"
        f" (x{pg_bytes / max(parquet_bytes, 1):.1f})"
    )
    print(
        "  read of a dropped month, one tenant's month:"
        f" {spread(month_read, 's per 1M', scale=million)}"
    )
    print(
        f"  read of a dropped month, one tenant's partial hour: {spread(hour_read, 'ms', 1, scale=1000)}"
    )
    print("  peak RSS of this process after each step of round 1 (MB):", end="")
    print(", ".join(f" {step} {mb}" for step, mb in peaks[:5] + peaks[-1:]))
    connection.close()
    workdir.cleanup()
    scratch_drop(server, DB)


if __name__ == "__main__":
    main()
