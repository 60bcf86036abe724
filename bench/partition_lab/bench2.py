import sys

sys.argv = [sys.argv[0], "x"]
import psycopg

import bench
from bench import batch, ids_sql, machine_banner, run, spread

V = {
    "flat (today)": bench.FLAT,
    **{f"{t} + ids table (a)": ids_sql(t, False) for t in ("p24", "p36", "p400")},
}
conn = psycopg.connect(
    "host=127.0.0.1 user=postgres dbname=reckon_partition_lab",
    autocommit=True,
    cursor_factory=psycopg.RawCursor,
)
print(machine_banner())
times = {k: [] for k in V}
for r in range(33):
    for k, sql in V.items():
        dt, row = run(conn, sql, batch(), r % 16)
        assert row[0] == 512
        if r >= 3:
            times[k].append(dt * 1000)
for k, v in times.items():
    print(f"{k:28s} {spread(v, 'ms')}")
