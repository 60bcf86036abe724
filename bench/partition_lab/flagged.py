import sys

sys.argv = [sys.argv[0], "x"]
import datetime as dt

import psycopg

import bench

conn = psycopg.connect(
    "host=127.0.0.1 user=postgres dbname=reckon_partition_lab",
    autocommit=True,
    cursor_factory=psycopg.RawCursor,
)
T = "00000000-0000-4000-8000-000000000019"
recs = bench.batch(100, dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC))
for i, r in enumerate(recs):
    r["tenant_id"] = T
    if i % 10 == 0:
        r["flags"] = ["reasoning_exceeds_output"]
print("inserted", bench.run(conn, bench.FLAT, recs, 3)[1])
raw = conn.execute(
    "SELECT count(*), sum(input_tokens), sum(output_tokens) FROM metering_usagerecord WHERE tenant_id = $1 AND started_at >= '2026-12-06 03:00' AND started_at < '2026-12-06 04:00'",
    (T,),
).fetchone()
rol = conn.execute(
    "SELECT sum(requests), sum(flagged_requests), sum(input_tokens), sum(output_tokens) FROM metering_usagerollup WHERE tenant_id = $1 AND hour = '2026-12-06 03:00'",
    (T,),
).fetchone()
fl = conn.execute(
    "SELECT count(*), sum(input_tokens), sum(output_tokens) FROM metering_usagerecord WHERE tenant_id = $1 AND started_at >= '2026-12-06 03:00' AND started_at < '2026-12-06 04:00' AND flags <> '[]'",
    (T,),
).fetchone()
print("raw scan as usage_summary (count, input, output):", raw)
print("rollup (requests, flagged_requests, input, output):", rol)
print("flagged raw (count, input, output):", fl)
