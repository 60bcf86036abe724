"""Ledger capacity: records/s through the real group commit, records/s by bulk COPY, and
bytes per record in PostgreSQL, with a bare INSERT of the same rows as the same-run
baseline.

    make bench-ledger      # or: .venv/bin/python bench/ledger_bench.py [--rounds 7]

Everything happens in a scratch database `reckon_ledger_bench` (dropped first, created,
migrated, dropped at the end unless --keep). Each round, interleaved:
- group commit: `--producers` concurrent tasks on ONE event loop (one core) hand
  `--records` records to `metering.ledger.writer.LedgerWriter` with its PostgreSQL sink
  (the proxy's own write path: one statement per batch inserting the records, folding
  them into the hourly rollups, ON CONFLICT idempotency), each waiting for its commit;
- bare INSERT: the same number of rows, in batches of the writer's maximum batch, each
  one plain `INSERT … SELECT FROM json_to_recordset` into a copy of the ledger table
  (same columns and indexes; no rollup fold, no conflict check, no waiting producers);
- COPY: the same number of rows by `COPY … FROM STDIN` into the ledger (no rollups).
Rows: `--tenants` tenants with one key each, 4 aliases, realistic token counts,
started over the last `--hours` hours (1: a live proxy writes the current hour).
Bytes per record: the ledger's heap, TOAST and indexes (every partition, if
partitioned) and the rollups, over the records it holds, after the rounds and after
filling it to `--fill` records by COPY. The machine (CPUs, memory, load) is printed
first; every rate as its median, min and max over the rounds.
"""

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database, scratch_drop  # noqa: E402
from bench.stats import add_database_url, columns, columns_header, machine_banner, spread  # noqa: E402

DB = "reckon_ledger_bench"
ALIASES = ("reasoner", "chat", "coder", "embedder")
# The provider account each alias's route belongs to (None: our own accelerators); a
# stamp without a foreign key, so the ids need no rows.
ACCOUNTS = {"reasoner": 1, "chat": 1, "coder": 2, "embedder": None}
# The targets (route ids) of each alias (decision 0117): every record names the one that
# served it, so every record folds into the per-target tables too (RouteTargetHour and
# its latency buckets); "reasoner" is served by two deployments.
TARGETS = {"reasoner": (1, 2), "chat": (3,), "coder": (4,), "embedder": (5,)}
EFFORTS = ("", "low", "medium", "high")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--records", type=int, default=20_000, help="per round and path")
    parser.add_argument("--producers", type=int, default=256)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--hours", type=int, default=1)
    parser.add_argument("--fill", type=int, default=1_000_000, help="records to size at")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--unrouted",
        action="store_true",
        help="records without routing stamps (as before decision 0117): no per-target fold",
    )
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    server = scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_URL"] = ""  # the writer reports spool to Redis only when it spools
    try:
        run(args)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            scratch_drop(server, DB)


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from metering.ledger.postgres import PostgresLedgerSink, pg_conninfo
    from metering.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    keys = [
        api_key_create(tenant=tenant_create(name=f"bench-{i}")).api_key for i in range(args.tenants)
    ]
    conninfo = pg_conninfo(connection.settings_dict)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_bare (LIKE metering_usagerecord INCLUDING ALL)")
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(",")[0]
    connection.close()
    rng = random.Random(14)
    now = datetime.now(UTC)
    max_batch = settings.RECKON_LEDGER_MAX_BATCH

    def rows(n: int) -> list[dict[str, Any]]:
        return [record(rng, keys, now, args.hours, routed=not args.unrouted) for _ in range(n)]

    rates: dict[str, list[float]] = {"group commit": [], "bare INSERT": [], "COPY": []}
    batches: list[float] = []
    for _ in range(args.rounds):
        sink = PostgresLedgerSink(conninfo, concurrency=settings.RECKON_LEDGER_CONNECTIONS)
        elapsed, mean_batch = asyncio.run(group_commit(rows(args.records), args, sink))
        rates["group commit"].append(args.records / elapsed)
        batches.append(mean_batch)
        rates["bare INSERT"].append(
            args.records / bare_insert(conninfo, rows(args.records), max_batch)
        )
        rates["COPY"].append(args.records / copy_rows(conninfo, rows(args.records)))

    print(
        f"ledger capacity, {datetime.now(UTC):%Y-%m-%d}, {version}"
        f" (client and server share the CPUs), {args.rounds} rounds of {args.records:,} records,"
        f" {args.producers} producers on one event loop,"
        f" RECKON_LEDGER_MAX_BATCH={max_batch},"
        f" RECKON_LEDGER_CONNECTIONS={settings.RECKON_LEDGER_CONNECTIONS},"
        f" {'no routing stamps' if args.unrouted else 'every record routed (per-target fold)'}"
    )
    print(f"  {'records/s':<14}{columns_header()}")
    for name, values in rates.items():
        print(f"  {name:<14}{columns(values, 0)}")
    print(f"  group commit mean batch: {spread(batches, 'records', 0)}")
    print("  (bare INSERT: same batches into a same-shaped table, no rollups, no ON CONFLICT)")

    vacuum(conninfo)
    report_sizes(conninfo, "after the rounds")
    remaining = args.fill - sizes(conninfo)[0]
    if remaining > 0:
        while remaining > 0:
            chunk = min(remaining, 100_000)
            copy_rows(conninfo, rows(chunk))
            remaining -= chunk
        vacuum(conninfo)
        report_sizes(conninfo, f"after filling to {args.fill:,} by COPY")


def report_sizes(conninfo: str, label: str) -> None:
    count, ledger, indexes, rollups, rollup_rows = sizes(conninfo)
    print(
        f"  bytes/record {label} ({count:,} records, {rollup_rows:,} rollup rows):"
        f" ledger {ledger / count:.0f} (of which indexes {indexes / count:.0f}),"
        f" rollups {rollups / count:.1f}, total {(ledger + rollups) / count:.0f}"
    )


def record(
    rng: random.Random, keys: list[Any], now: datetime, hours: int, *, routed: bool = True
) -> dict[str, Any]:
    key = rng.choice(keys)
    started = now - timedelta(seconds=rng.randrange(hours * 3600))
    input_tokens = rng.randrange(50, 4000)
    output_tokens = rng.randrange(10, 1500)
    reasoning = rng.randrange(0, output_tokens)
    spend = Decimal(input_tokens * 110 + output_tokens * 440).scaleb(-8)
    alias = rng.choice(ALIASES)
    stamps: dict[str, Any] = {}
    if routed:
        targets = TARGETS[alias]
        stamps = {"route_id": rng.choice(targets), "reasoning_effort": rng.choice(EFFORTS)}
        if len(targets) > 1:
            stamps |= {"attempt": 1, "route_policy": "weighted", "route_reason": "weight"}
    return {
        **stamps,
        "request_id": uuid.uuid4(),
        "tenant_id": key.tenant_id,
        "api_key_id": key.pk,
        "alias": alias,
        "provider": "openai",
        "upstream_model": "sim-reasoner",
        "accelerator": "nvidia-h100-sxm",
        "provider_account_id": ACCOUNTS[alias],
        "endpoint": "chat.completions",
        "stream": rng.random() < 0.5,
        "status": "completed",
        "upstream_status": 200,
        "upstream_response_id": f"chatcmpl-{rng.getrandbits(64):016x}",
        "input_tokens": input_tokens,
        "cached_input_tokens": rng.choice((0, 0, input_tokens // 2)),
        "cache_write_tokens": 0,
        "output_tokens": output_tokens - reasoning,
        "reasoning_tokens": reasoning,
        "reasoning_source": "reported",
        "flags": [],
        "raw_usage": None,
        "cost_rate_id": None,
        "serving_cost_usd": spend * Decimal("0.3"),
        "reasoning_cost_usd": spend * Decimal("0.1"),
        "spend_usd": spend,
        "client_disconnected": False,
        "ttft_us": rng.randrange(50_000, 900_000),
        "latency_us": rng.randrange(900_000, 9_000_000),
        "started_at": started,
        "finished_at": started + timedelta(seconds=2),
    }


async def group_commit(
    records: list[dict[str, Any]], args: argparse.Namespace, sink: Any
) -> tuple[float, float]:
    """Seconds for `records` through LedgerWriter, and the mean batch it committed."""
    from django.conf import settings

    from metering.ledger.writer import LedgerWriter

    commits = 0
    write = sink.write

    async def counted(batch: list[dict[str, Any]], touch: list[int]) -> None:
        nonlocal commits
        commits += 1
        await write(batch, touch)

    sink.write = counted
    with tempfile.TemporaryDirectory() as spool:
        writer = LedgerWriter(
            max_batch=settings.RECKON_LEDGER_MAX_BATCH,
            spool_dir=Path(spool),
            sink=sink,
            parallel_at=settings.RECKON_LEDGER_PARALLEL_AT,
            redis_url="",
        )
        queue = iter(records)

        async def producer() -> None:
            for rec in queue:
                await writer.write(rec)

        await writer.write(records[0] | {"request_id": uuid.uuid4()})  # connect, warm up
        commits = 0
        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(args.producers)))
        elapsed = time.perf_counter() - started
        await writer.close()
    await sink.close()
    return elapsed, len(records) / max(commits, 1)


def _columns() -> list[str]:
    from metering.ledger.postgres import _PG_COLUMNS

    return [name for name, _ in _PG_COLUMNS]


def bare_insert(conninfo: str, records: list[dict[str, Any]], batch: int) -> float:
    """Seconds to insert `records` with one plain INSERT per batch (the baseline)."""
    import orjson
    import psycopg

    from metering.ledger.postgres import _PG_COLUMNS, _json_default

    names = ", ".join(_columns())
    definitions = ", ".join(f"{name} {kind}" for name, kind in _PG_COLUMNS)
    sql = (
        f"INSERT INTO bench_bare ({names}, recorded_at)"  # noqa: S608 - constant column lists
        f" SELECT {names}, now() FROM json_to_recordset($1::json) AS u({definitions})"
    )
    payloads = [
        orjson.dumps(records[i : i + batch], default=_json_default).decode()
        for i in range(0, len(records), batch)
    ]
    with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        started = time.perf_counter()
        for payload in payloads:
            conn.execute(sql, (payload,))
        return time.perf_counter() - started


def copy_rows(conninfo: str, records: list[dict[str, Any]]) -> float:
    """Seconds to COPY `records` into the ledger."""
    import orjson
    import psycopg

    names = _columns()
    with psycopg.connect(conninfo) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            statement = f"COPY metering_usagerecord ({', '.join(names)}, recorded_at) FROM STDIN"
            with cursor.copy(statement) as copy:
                for rec in records:
                    copy.write_row(
                        [
                            orjson.dumps(rec[n]).decode()
                            if n in ("flags", "raw_usage")
                            else rec.get(n)  # (a stamp absent: NULL, as in the batch)
                            for n in names
                        ]
                        + [rec["finished_at"]]
                    )
        conn.commit()
        return time.perf_counter() - started


def vacuum(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE metering_usagerecord")
        conn.execute("VACUUM ANALYZE metering_usagerollup")


def sizes(conninfo: str) -> tuple[int, int, int, int, int]:
    """Records, ledger bytes (heap + TOAST + indexes, every partition), of which indexes,
    rollup bytes, rollup rows."""
    import psycopg

    # every leaf partition of a partitioned table, or the table itself
    tree = (
        "(SELECT relid FROM pg_partition_tree('{0}') WHERE isleaf"
        " UNION ALL SELECT '{0}'::regclass WHERE NOT EXISTS"
        " (SELECT FROM pg_partition_tree('{0}'))) AS leaves"
    )
    with psycopg.connect(conninfo) as conn:
        count = conn.execute("SELECT count(*) FROM metering_usagerecord").fetchone()[0]
        ledger, indexes = conn.execute(
            "SELECT sum(pg_total_relation_size(relid)), sum(pg_indexes_size(relid))"  # noqa: S608
            f" FROM {tree.format('metering_usagerecord')}"
        ).fetchone()
        rollups = conn.execute(
            f"SELECT sum(pg_total_relation_size(relid)) FROM {tree.format('metering_usagerollup')}"  # noqa: S608
        ).fetchone()[0]
        rollup_rows = conn.execute("SELECT count(*) FROM metering_usagerollup").fetchone()[0]
    return count, int(ledger), int(indexes), int(rollups), rollup_rows


if __name__ == "__main__":
    main()
