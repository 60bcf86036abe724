"""Spend-hold benchmark: atomic admit/settle of spend holds in Redis vs. PostgreSQL, in one run.

A spend hold is what the proxy places on a budget scope before it forwards a call and
settles when the call's actual cost is known. Each scope holds `spent` and `held`, in
nano-USD integers. Admission is atomic: it places the hold only if
limit - spent - held >= hold, and refuses otherwise. Settlement releases the hold and adds
the actual spend. Three implementations are measured:

- Redis Lua: one hash per scope. Admission is one Lua script (EVALSHA) and settlement is
  another, both called through redis.asyncio with a blocking pool of 32 connections.
- PG SELECT FOR UPDATE: one row per scope in `bench_budget`. Admission is one transaction:
  BEGIN, SELECT ... FOR UPDATE, check, UPDATE held, COMMIT.
- PG conditional UPDATE: admission is a single
  `UPDATE ... SET held = held + hold WHERE ... AND limit_nano - spent - held >= hold RETURNING 1`.
  Both PostgreSQL forms settle with the same single UPDATE and use psycopg 3 async with
  32 autocommit connections, handed out through an asyncio.Queue.

There are three load cases, each run for --duration seconds by one asyncio process:
c=1 (one caller), c=32 on one hot scope (every call contends on the same budget, the
worst case for row locks), and c=32 spread over 1000 scopes (each caller cycles through
its own scopes, so no two callers ever share one). The report shows admit+settle pairs
per second and the p50/p99 latency of admission alone. At c=32 that latency includes any
wait for a pooled connection. Cases run in interleaved rounds and the backend order
rotates each round, so machine noise affects every backend alike. The machine (CPUs,
memory, load) is printed first; every figure as its median, min and max over the rounds,
with the ratio of medians to Redis.

Correctness is checked too. After every run, each scope's holds must be released to
exactly 0, `spent` must equal pairs x actual, and no call may be refused. In every round,
64 admits of 1000 fire at once at a scope with a limit of 20500, where only 20 fit. The
check passes only if exactly 20 are admitted and held ends at 20000 (held only grows
during the burst, so its final value is its maximum).

    .venv/bin/python bench/control_bench.py [--duration 3 --rounds 2]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and REDIS_URL
(default redis://127.0.0.1:6379/0). It creates and then drops the schema
`reckon_control_bench`, and deletes its Redis keys (prefix `reckon:control-bench:`).
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.stats import add_database_url, columns, columns_header, machine_banner  # noqa: E402

SCHEMA = "reckon_control_bench"
TABLE = f"{SCHEMA}.bench_budget"
KEY_PREFIX = "reckon:control-bench:"
POOL_SIZE = 32
HOLD = 1000  # nano-USD placed per call
ACTUAL = 600  # nano-USD settled per call
OPEN_LIMIT = 10**15  # so high that no throughput run is ever refused
BURST_CALLS, BURST_FIT, BURST_LIMIT = 64, 20, 20_500
CASES = [  # label, concurrency, scopes
    ("c=1", 1, 1),
    ("c=32 hot scope", 32, 1),
    ("c=32 1000 scopes", 32, 1000),
]

ADMIT_LUA = """
local v = redis.call('HMGET', KEYS[1], 'spent', 'held')
local hold = tonumber(ARGV[2])
if tonumber(ARGV[1]) - tonumber(v[1] or '0') - tonumber(v[2] or '0') >= hold then
  redis.call('HINCRBY', KEYS[1], 'held', hold)
  return 1
end
return 0
"""

SETTLE_LUA = """
redis.call('HINCRBY', KEYS[1], 'held', -tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[2]))
return 1
"""


class RedisHolds:
    name = "Redis Lua"

    def __init__(self, url: str) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE)
        self.redis = aioredis.Redis(connection_pool=pool)
        self._admit = self.redis.register_script(ADMIT_LUA)
        self._settle = self.redis.register_script(SETTLE_LUA)
        self.limit = 0

    async def reset(self, scopes: list[str], limit: int) -> None:
        # The limit is the caller's (cached) configuration, passed with every admission.
        self.limit = limit
        await self.clear()
        async with self.redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hset(KEY_PREFIX + scope, mapping={"spent": 0, "held": 0})
            await pipe.execute()

    async def admit(self, scope: str, hold: int) -> bool:
        return await self._admit(keys=[KEY_PREFIX + scope], args=[self.limit, hold]) == 1

    async def settle(self, scope: str, hold: int, actual: int) -> None:
        await self._settle(keys=[KEY_PREFIX + scope], args=[hold, actual])

    async def totals(self, scopes: list[str]) -> tuple[int, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hmget(KEY_PREFIX + scope, ["spent", "held"])
            rows = await pipe.execute()
        return sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows)

    async def clear(self) -> None:
        keys = [key async for key in self.redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        if keys:
            await self.redis.delete(*keys)

    async def close(self) -> None:
        await self.clear()
        await self.redis.aclose()


class PgPool:
    """N autocommit connections handed out through a queue."""

    def __init__(self, connections: list[psycopg.AsyncConnection[Any]]) -> None:
        self.connections = connections
        self.queue: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for conn in connections:
            self.queue.put_nowait(conn)

    @classmethod
    async def open(cls, url: str, size: int) -> "PgPool":
        return cls(
            [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(size)]
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self.queue.get()
        try:
            yield conn
        finally:
            self.queue.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()


class PgHolds:
    """Both PostgreSQL forms share the table and settlement; they differ in admission."""

    def __init__(self, pool: PgPool, name: str) -> None:
        self.pool = pool
        self.name = name

    async def reset(self, scopes: list[str], limit: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(f"TRUNCATE {TABLE}")
            await conn.execute(
                "INSERT INTO reckon_control_bench.bench_budget"
                " SELECT s, %s, 0, 0 FROM unnest(%s::text[]) AS s",
                (limit, scopes),
            )

    async def admit(self, scope: str, hold: int) -> bool:
        raise NotImplementedError

    async def settle(self, scope: str, hold: int, actual: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE reckon_control_bench.bench_budget"
                " SET held = held - %s, spent = spent + %s WHERE scope = %s",
                (hold, actual, scope),
            )

    async def totals(self, scopes: list[str]) -> tuple[int, int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(spent), 0), coalesce(sum(held), 0)"
                " FROM reckon_control_bench.bench_budget WHERE scope = ANY(%s)",
                (scopes,),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


class PgSelectForUpdate(PgHolds):
    async def admit(self, scope: str, hold: int) -> bool:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT limit_nano - spent - held FROM reckon_control_bench.bench_budget"
                " WHERE scope = %s FOR UPDATE",
                (scope,),
            )
            row = await cur.fetchone()
            if row is None or row[0] < hold:
                return False
            await conn.execute(
                "UPDATE reckon_control_bench.bench_budget SET held = held + %s WHERE scope = %s",
                (hold, scope),
            )
            return True


class PgConditionalUpdate(PgHolds):
    async def admit(self, scope: str, hold: int) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE reckon_control_bench.bench_budget SET held = held + %s"
                " WHERE scope = %s AND limit_nano - spent - held >= %s RETURNING 1",
                (hold, scope, hold),
            )
            return await cur.fetchone() is not None


Backend = RedisHolds | PgSelectForUpdate | PgConditionalUpdate


async def run_case(backend: Backend, concurrency: int, n_scopes: int, duration: float) -> dict:
    """Drive admit+settle pairs for `duration` seconds; return throughput and latencies."""
    scopes = [f"s{i:04d}" for i in range(n_scopes)]
    await backend.reset(scopes, OPEN_LIMIT)
    latencies: list[int] = []  # admission only, ns
    counts = {"pairs": 0, "refused": 0}
    deadline = time.perf_counter() + duration

    async def worker(mine: list[str]) -> None:
        i = 0
        while time.perf_counter() < deadline:
            scope = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter_ns()
            admitted = await backend.admit(scope, HOLD)
            latencies.append(time.perf_counter_ns() - t0)
            if not admitted:
                counts["refused"] += 1
                continue
            await backend.settle(scope, HOLD, ACTUAL)
            counts["pairs"] += 1

    # Each caller cycles through its own slice of the scopes: on 1000 scopes no two callers
    # ever share one; on one scope they all share it.
    started = time.perf_counter()
    await asyncio.gather(*(worker(scopes[w::concurrency] or scopes) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    spent, held = await backend.totals(scopes)
    latencies.sort()
    return {
        "pairs_s": counts["pairs"] / elapsed,
        "p50_ms": percentile(latencies, 0.50) / 1e6,
        "p99_ms": percentile(latencies, 0.99) / 1e6,
        "ok": held == 0 and spent == counts["pairs"] * ACTUAL and counts["refused"] == 0,
        "detail": f"pairs {counts['pairs']}, refused {counts['refused']}, "
        f"spent {spent}, held {held}",
    }


async def burst(backend: Backend) -> tuple[bool, str]:
    """64 admits at once against room for exactly 20 holds; no settlement."""
    await backend.reset(["burst"], BURST_LIMIT)
    results = await asyncio.gather(*(backend.admit("burst", HOLD) for _ in range(BURST_CALLS)))
    admitted = sum(results)
    spent, held = await backend.totals(["burst"])
    # Held only grows during the burst, so its final value is the most it ever reached.
    ok = admitted == BURST_FIT and held == admitted * HOLD and held <= BURST_LIMIT
    return ok, f"admitted {admitted}/{BURST_CALLS}, held {held} of limit {BURST_LIMIT}"


def percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench(args: argparse.Namespace) -> int:
    admin = await psycopg.AsyncConnection.connect(args.database_url, autocommit=True)
    await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await admin.execute(f"CREATE SCHEMA {SCHEMA}")
    await admin.execute(
        f"CREATE TABLE {TABLE} (scope text PRIMARY KEY, limit_nano bigint NOT NULL,"
        " spent bigint NOT NULL, held bigint NOT NULL)"
    )
    settings = {}
    for name in ("server_version", "synchronous_commit", "fsync"):
        cur = await admin.execute(f"SHOW {name}")
        row = await cur.fetchone()
        settings[name] = row[0] if row else "?"
    pool = await PgPool.open(args.database_url, POOL_SIZE)
    redis_holds = RedisHolds(args.redis_url)
    backends: list[Backend] = [
        redis_holds,
        PgSelectForUpdate(pool, "PG SELECT FOR UPDATE"),
        PgConditionalUpdate(pool, "PG conditional UPDATE"),
    ]
    runs: dict[tuple[str, str], list[dict]] = {
        (b.name, label): [] for b in backends for label, _, _ in CASES
    }
    bursts: dict[str, list[tuple[bool, str]]] = {b.name: [] for b in backends}
    try:
        info = await redis_holds.redis.info()
        for backend in backends:  # open connections, load scripts, prepare statements
            await run_case(backend, POOL_SIZE, 1000, 0.5)
        for round_no in range(args.rounds):
            shift = round_no % len(backends)
            order = backends[shift:] + backends[:shift]
            for label, concurrency, n_scopes in CASES:
                for backend in order:
                    runs[(backend.name, label)].append(
                        await run_case(backend, concurrency, n_scopes, args.duration)
                    )
            for backend in order:
                bursts[backend.name].append(await burst(backend))
    finally:
        await redis_holds.close()
        await pool.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await admin.close()

    def m(name: str, label: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[(name, label)])

    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure-Python parser (hiredis not installed)"
    print()
    print(
        f"Spend-hold benchmark: admit+settle pairs, {args.rounds} interleaved rounds x "
        f"{args.duration:g}s per case (median, min, max over the rounds),"
    )
    print(
        f"one asyncio driver process ({args.loop}), "
        f"pools of {POOL_SIZE} connections, all on this machine."
    )
    print(
        f"Redis {info['redis_version']} (appendonly {'yes' if info['aof_enabled'] else 'no'}),"
        f" redis-py {redis.__version__} with {parser};"
    )
    print(
        f"PostgreSQL {settings['server_version'].split()[0]} (synchronous_commit "
        f"{settings['synchronous_commit']}, fsync {settings['fsync']}), psycopg "
        f"{psycopg.__version__} ({psycopg.pq.__impl__})."
    )
    base = backends[0].name
    for field, title, digits in (
        ("pairs_s", "admit+settle pairs/s", 0),
        ("p50_ms", "admission p50 ms", 3),
        ("p99_ms", "admission p99 ms", 3),
    ):
        print()
        print(f"{title:41}{columns_header()}{'x Redis':>10}")
        for label, _, _ in CASES:
            for backend in backends:
                values = [r[field] for r in runs[(backend.name, label)]]
                ratio = m(backend.name, label, field) / m(base, label, field)
                print(f"  {backend.name:23}{label:16}{columns(values, digits)}{ratio:>10.2f}")
    print()
    print(
        "scaling of pairs/s relative to c=1, ratio of medians (about 1.0 or below: calls run one at a time):"
    )
    for backend in backends:
        single = m(backend.name, "c=1", "pairs_s")
        hot = m(backend.name, "c=32 hot scope", "pairs_s") / single
        spread = m(backend.name, "c=32 1000 scopes", "pairs_s") / single
        print(f"  {backend.name:23}hot scope {hot:5.2f}x   1000 scopes {spread:5.2f}x")
    print()
    failed = False
    print(
        f"correctness: {BURST_CALLS} concurrent admits of {HOLD} against a limit of "
        f"{BURST_LIMIT} (exactly {BURST_FIT} fit), every round;"
    )
    print("after every run: held back to 0, spent == pairs x actual, nothing refused.")
    for backend in backends:
        burst_ok = all(ok for ok, _ in bursts[backend.name])
        bad_runs = [
            f"{label}: {r['detail']}"
            for label, _, _ in CASES
            for r in runs[(backend.name, label)]
            if not r["ok"]
        ]
        failed |= not burst_ok or bool(bad_runs)
        print(
            f"  {backend.name:23}burst {'PASS' if burst_ok else 'FAIL'} "
            f"({'; '.join(dict.fromkeys(d for _, d in bursts[backend.name]))})   "
            f"runs {'PASS' if not bad_runs else 'FAIL: ' + '; '.join(bad_runs)}"
        )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3, help="seconds per case")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; medians reported"
    )
    add_database_url(parser)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    print(machine_banner())
    try:
        import uvloop

        runner, args.loop = uvloop.run, "uvloop"
    except ImportError:
        runner, args.loop = asyncio.run, "asyncio"
    sys.exit(runner(bench(args)))


if __name__ == "__main__":
    main()
