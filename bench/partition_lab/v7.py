import os
import random
import sys
import uuid

sys.argv = [sys.argv[0], "x"]
import datetime as dt

import psycopg

import bench
from bench import machine_banner, spread


def v7(s):
    us = int((s - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1))
    ms, sub = divmod(us, 1000)
    b = (
        ms.to_bytes(6, "big")
        + ((0x7 << 12) | sub).to_bytes(2, "big")
        + bytes([0x80 | random.getrandbits(6)])
        + os.urandom(7)
    )
    return str(uuid.UUID(bytes=b))


def batch():
    out = bench.batch()
    for r in out:
        r["request_id"] = v7(dt.datetime.fromisoformat(r["started_at"]))
    return out


conn = psycopg.connect(
    "host=127.0.0.1 user=postgres dbname=reckon_partition_lab",
    autocommit=True,
    cursor_factory=psycopg.RawCursor,
)
V = {
    t: bench.FLAT.replace("metering_usagerecord", t).replace(
        "ON CONFLICT (request_id) DO", "ON CONFLICT (request_id, started_at) DO"
    )
    for t in ("v7_nocheck", "v7_check")
}
print(machine_banner())
times = {k: [] for k in V}
for r in range(33):
    for k, sql in V.items():
        d, row = bench.run(conn, sql, batch(), r % 16)
        assert row[0] == 512
        if r >= 3:
            times[k].append(d * 1000)
for k, v in times.items():
    print(f"(b) {k:12s} {spread(v, 'ms')}")
# a moved started_at with the same v7 id is refused by the CHECK
rec = batch()[:1]
rec[0]["started_at"] = "2026-12-20T00:00:00+00:00"
try:
    bench.run(conn, V["v7_check"], rec, 0)
    print("moved id accepted!")
except psycopg.errors.CheckViolation as e:
    print("moved id refused:", str(e).splitlines()[0])
