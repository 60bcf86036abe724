"""Insert throughput of one 512-row ledger batch statement: flat vs partitioned variants."""

import os
import random
import statistics
import sys
import time
import uuid

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
# bench/ itself: this lab's own bench.py shadows the `bench` package here
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django

django.setup()
import psycopg
from stats import machine_banner, spread

from metering.ledger.postgres import _PG_COLUMNS, PG_INSERT_SQL, pg_insert_statement


def counted(sql):
    """The statement with the count of rows inserted as its result (the lab checks it; the
    service's statement ends with a constant since its sink never read the counts)."""
    head, constant, rest = sql.rpartition(" SELECT 1")
    assert constant and not rest, "the ledger statement no longer ends with SELECT 1"
    return head + " SELECT (SELECT count(*) FROM inserted)"


FLAT = counted(PG_INSERT_SQL)
names = [n for n, _ in _PG_COLUMNS]
defs = ", ".join(f"{n} {k}" for n, k in _PG_COLUMNS)
head, tail = FLAT.split(" hourly AS (", 1)
ret = head.split(" RETURNING ", 1)[1]  # "id, tenant_id, ... ),"


def ids_sql(table, local_conflict):
    conflict = " ON CONFLICT (request_id, started_at) DO NOTHING" if local_conflict else ""
    return (
        f"WITH u AS MATERIALIZED (SELECT * FROM json_to_recordset($1::json) AS u({defs})),"
        " ids AS (INSERT INTO usage_request_ids (request_id, started_at)"
        " SELECT request_id, started_at FROM u ON CONFLICT DO NOTHING RETURNING request_id),"
        f" inserted AS (INSERT INTO {table} ({', '.join(names)}, recorded_at)"
        f" SELECT DISTINCT ON (u.request_id) {', '.join('u.' + n for n in names)}, now()"
        f" FROM u JOIN ids ON ids.request_id = u.request_id{conflict} RETURNING {ret}"
        " hourly AS (" + tail
    )


VARIANTS = {
    "flat (today)": FLAT,
    "part + ids table (a)": ids_sql("u_part", False),
    "part + ids table (a) + local uniq(req,started)": ids_sql("u_partb", True),
    "part + uniq(req,started) only (b)": FLAT.replace("metering_usagerecord", "u_partb").replace(
        "ON CONFLICT (request_id) DO", "ON CONFLICT (request_id, started_at) DO"
    ),
}


def batch(n=512, base=None):
    base = base or __import__("datetime").datetime(
        2026, 12, 4, 10, tzinfo=__import__("datetime").timezone.utc
    )
    from datetime import timedelta

    out = []
    for i in range(n):
        s = base + timedelta(microseconds=random.randrange(3_600_000_000))
        out.append(
            dict(
                request_id=str(uuid.uuid4()),
                tenant_id=f"00000000-0000-4000-8000-0000000000{random.randrange(20):02d}",
                api_key_id=random.randrange(1, 51),
                alias=f"alias-{random.randrange(5)}",
                provider="openai",
                upstream_model="gpt-x",
                accelerator="h100",
                endpoint="chat.completions",
                stream=True,
                status="completed",
                upstream_status=200,
                upstream_response_id="chatcmpl-x",
                input_tokens=random.randrange(2000),
                cached_input_tokens=0,
                cache_write_tokens=0,
                output_tokens=random.randrange(500),
                reasoning_tokens=0,
                reasoning_source="none",
                flags=[],
                raw_usage={"x": 1},
                cost_rate_id=None,
                serving_cost_usd="0.001",
                reasoning_cost_usd="0",
                spend_usd="0.002",
                client_disconnected=False,
                ttft_us=1000,
                latency_us=20000,
                started_at=s.isoformat(),
                finished_at=s.isoformat(),
            )
        )
    return out


def run(conn, sql, recs, shard):
    stmt, params = pg_insert_statement(recs, [], shard)
    t = time.perf_counter()
    row = conn.execute(sql, (params[0], params[1])).fetchone()
    return time.perf_counter() - t, row


if __name__ == "__main__":
    conn = psycopg.connect(
        "host=127.0.0.1 user=postgres dbname=reckon_partition_lab",
        autocommit=True,
        cursor_factory=psycopg.RawCursor,
    )
    mode = sys.argv[1]
    if mode == "bench":
        runs = int(sys.argv[2])
        print(machine_banner())
        times = {k: [] for k in VARIANTS}
        for r in range(runs + 3):
            for k, sql in VARIANTS.items():
                dt, row = run(conn, sql, batch(), r % 16)
                assert row[0] == 512, (k, row)
                if r >= 3:
                    times[k].append(dt * 1000)
        for k, v in times.items():
            print(f"{k:48s} {spread(v, 'ms')}  -> {512 / statistics.median(v) * 1000:8.0f} rows/s")
    elif mode == "semantics":
        for k, sql in VARIANTS.items():
            recs = batch(4)
            a = run(conn, sql, recs, 0)[1][0]
            replay = run(conn, sql, recs, 0)[1][0]
            moved = [
                dict(r, started_at="2026-03-15T12:00:00+00:00") for r in recs
            ]  # same ids, other partition
            other = run(conn, sql, moved, 0)[1][0]
            dup = batch(2)
            dup = dup + [dict(dup[0])]
            indup = run(conn, sql, dup, 0)[1][0]
            print(
                f"{k:48s} first={a} same-batch-replay={replay} same-ids-other-month={other} in-batch-dup(3 rows,2 ids)={indup}"
            )
