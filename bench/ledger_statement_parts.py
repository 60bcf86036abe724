"""Where a ledger batch statement's PostgreSQL CPU goes: the proxy's statement
(`metering.ledger.postgres.PG_INSERT_SQL`) beside statements made of its parts, each run
prepared on one autocommit connection, in a shuffled order round by round, measured by the
backend's own CPU (/proc/<pid>/schedstat, so other processes' load does not count):

    full            insert + rollups + per-target hours and latency buckets (the proxy's)
    insert+rollup   insert, fold into UsageRollup only
    insert          the records' insert (ON CONFLICT DO NOTHING, RETURNING the folded row)
    json            json_to_recordset of the batch alone (no write)
    tiny insert     one row of two columns into an unindexed table (a write's commit)
    noop            a read of the parameters (one round trip, no write)

    .venv/bin/python bench/ledger_statement_parts.py [--rounds 1000] [--size 1]

A scratch database (RECKON_BENCH_DB, default `reckon_statement_parts`: dropped first,
migrated, dropped at the end), records as bench/ledger_statement_bench.py makes them. The
database server must be on this machine.
"""

import argparse
import os
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def statements() -> dict[str, str]:
    from metering.ledger import postgres
    from metering.ledger.rollups import folded_record_sql, rollup_hourly_sql, rollup_upsert_sql

    names = ", ".join(name for name, _ in postgres._PG_COLUMNS)
    definitions = ", ".join(f"{name} {kind}" for name, kind in postgres._PG_COLUMNS)
    records = f"json_to_recordset($1::json) AS u({definitions})"
    # built from the ledger's constant column lists; no input reaches the SQL text
    inserted = (
        f"WITH inserted AS (INSERT INTO metering_usagerecord ({names}, recorded_at)"  # noqa: S608
        f" SELECT {names}, now() FROM {records} ON CONFLICT (request_id, started_at) DO NOTHING"
        f" RETURNING {folded_record_sql()})"
    )
    rollup = (
        f", hourly AS ({rollup_hourly_sql(source='inserted')}),"
        f" rolled AS ({rollup_upsert_sql(shard='$2::int2')})"
    )
    return {
        "full": postgres.PG_INSERT_SQL,
        "insert+rollup": inserted + rollup + " SELECT 1",
        "insert": inserted + " SELECT $2::int2",
        "json": f"SELECT count(*) FROM {records} WHERE $2::int2 IS NOT NULL",  # noqa: S608
        "tiny insert": "INSERT INTO bench_parts_tiny (at) SELECT now()"
        " WHERE $1::json IS NOT NULL AND $2::int2 IS NOT NULL",
        "noop": "SELECT $1::json IS NULL, $2::int2",
    }


def main() -> None:
    from bench.stats import add_database_url

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1, help="records per statement")
    add_database_url(parser)
    args = parser.parse_args()
    from bench.ledger_statement_bench import _prepare
    from bench.scratch import scratch_database, scratch_drop
    from bench.stats import machine_banner

    print(machine_banner(), flush=True)
    db = os.environ.get("RECKON_BENCH_DB") or "reckon_statement_parts"
    server = scratch_database(args.database_url, db)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_URL"] = ""
    try:
        _prepare(tenants=20)
        measure(args.rounds, args.size)
    finally:
        scratch_drop(server, db)


def measure(rounds: int, size: int) -> None:
    import orjson
    import psycopg
    from django.db import connection

    from bench.ledger_bench import record
    from metering.ledger import postgres
    from metering.ledger.record import request_id_for
    from metering.models import ApiKey

    keys = list(ApiKey.objects.order_by("pk"))
    conninfo = postgres.pg_conninfo(connection.settings_dict)
    connection.close()
    rng = random.Random(1)
    shard = 7

    def batch() -> str:
        now = datetime.now(UTC)
        records = [record(rng, keys, now, 1) for _ in range(size)]
        for rec in records:
            rec["request_id"] = request_id_for(rec["started_at"])
        return orjson.dumps(records, default=postgres._json_default).decode()

    parts = statements()
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        conn.execute("CREATE TABLE bench_parts_tiny (id bigserial, at timestamptz)")
        stats = Path(f"/proc/{conn.info.backend_pid}/schedstat")

        def backend_ns() -> int:
            return int(stats.read_text().split()[0])

        for sql in parts.values():  # prepared after a few runs, caches warm
            for _ in range(10):
                conn.execute(sql, (batch(), shard))
        for _ in range(rounds):
            order = list(parts)
            rng.shuffle(order)
            for name in order:
                params: tuple[Any, ...] = (batch(), shard)
                before = backend_ns()
                conn.execute(parts[name], params)
                cpu[name].append((backend_ns() - before) / 1000)
    print(f"backend CPU per statement of {size} record(s), µs, over {rounds} shuffled rounds")
    print(f"{'':16}{'p25':>8}{'p50':>8}{'p75':>8}")
    for name, values in cpu.items():
        values.sort()
        n = len(values)
        print(f"{name:16}{values[n // 4]:8.0f}{values[n // 2]:8.0f}{values[3 * n // 4]:8.0f}")


if __name__ == "__main__":
    main()
