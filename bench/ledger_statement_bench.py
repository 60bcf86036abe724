"""PostgreSQL's CPU per ledger batch statement: the backend's own CPU time (from
/proc/<pid>/schedstat, so the load of other processes does not count) for the proxy's
batch insert (`metering.ledger.postgres.pg_insert_statement`: insert, fold into the
rollups and per-target tables) at several batch sizes, per statement and per record.

    .venv/bin/python bench/ledger_statement_bench.py [--rounds 40] [--statements 10]
        [--sizes 1,9,32] [--baseline REV [--own-schema]] [--hold-snapshot]

Everything happens in a scratch database (RECKON_BENCH_DB, default
`reckon_statement_bench`: dropped first, created, migrated by this checkout, dropped at
the end). Each measured checkout runs in its own worker process with one connection
(autocommit, prepared after a few runs as the proxy's are) and its own rollup shard;
with `--baseline REV` a temporary worktree of REV is measured too, interleaved with this
checkout in short runs (REV must work on this checkout's schema; with `--own-schema` each
checkout writes to its own scratch database, migrated by that checkout, so a change of
schema or storage is compared too; `--hold-snapshot` keeps a read transaction open in each
database meanwhile, as a long report would, so old row versions cannot be pruned): on a
shared, busy
machine the CPU a statement takes drifts by tens of percent over seconds, so the two are
compared run by run (median of the paired ratios). Records are the ledger
bench's (every record routed, v7 request ids that encode their start, in the current
hour). The figures: CPU per statement at each size (median, min, max over the rounds)
and the slope between the smallest and largest size (CPU per record) and what it leaves
at zero records (fixed CPU per statement). The database server must be on this machine.
"""

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the tables the statement folds into
FOLD_TABLES = ("metering_usagerollup", "metering_routetargethour", "metering_routelatencybucket")


def _backend_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as stats:
        return int(stats.read().split()[0])


def worker(tree: Path, shard: int) -> None:
    """Serve `run <size> <statements>` lines on stdin: the backend CPU (ns) and wall time
    of that many batch statements of `size` new records, one JSON line each."""
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(ROOT))  # the ledger bench's records
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import psycopg
    from django.db import connection

    from bench.ledger_bench import record
    from metering.ledger.postgres import pg_conninfo, pg_insert_statement
    from metering.ledger.record import request_id_for
    from metering.models import ApiKey

    keys = list(ApiKey.objects.order_by("pk"))
    conninfo = pg_conninfo(connection.settings_dict)
    connection.close()
    rng = random.Random(shard)
    conn = psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.RawCursor)
    pid = conn.info.backend_pid

    def batch(size: int) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        records = [record(rng, keys, now, 1) for _ in range(size)]
        for rec in records:
            rec["request_id"] = request_id_for(rec["started_at"])
        return records

    for _ in range(20):  # connect, prepare, warm the caches
        conn.execute(*pg_insert_statement(batch(4), [], shard))
    print("ready", flush=True)
    for line in sys.stdin:
        _, size, count = line.split()
        statements = [pg_insert_statement(batch(int(size)), [], shard) for _ in range(int(count))]
        cpu, wall = _backend_cpu_ns(pid), time.perf_counter()
        for sql, params in statements:
            conn.execute(sql, params)
        cpu, wall = _backend_cpu_ns(pid) - cpu, time.perf_counter() - wall
        print(json.dumps({"cpu_ns": cpu, "wall_s": wall}), flush=True)
    conn.close()


class Worker:
    def __init__(self, tree: Path, shard: int, database_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), str(shard)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
            env={**os.environ, "DATABASE_URL": database_url},
        )
        try:
            assert self.process.stdout is not None
            if self.process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"worker for {tree} did not start")
        except BaseException:
            self.process.kill()  # its connection goes with it
            self.process.wait()
            raise

    def run(self, size: int, count: int) -> float:
        """Backend CPU per statement, in microseconds."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"run {size} {count}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["cpu_ns"] / count / 1000

    def close(self) -> None:
        """End of input: the worker closes its connection and exits (killed if it has not
        within 10 s)."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):  # a worker that died has closed its end
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--prepare":
        sys.path.insert(0, sys.argv[2])  # the checkout whose migrations make the schema
        _prepare(int(sys.argv[3]))
        return
    sys.path.insert(0, str(ROOT))
    from bench.scratch import scratch_database, scratch_drop
    from bench.stats import add_database_url, machine_banner

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--statements", type=int, default=10, help="per round, size and tree")
    parser.add_argument("--sizes", default="1,9,32")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--baseline", help="a git revision to measure beside this checkout")
    parser.add_argument(
        "--own-schema",
        action="store_true",
        help="with --baseline: each checkout migrates and writes its own scratch database",
    )
    parser.add_argument(
        "--hold-snapshot",
        action="store_true",
        help="keep a read transaction open in each database while measuring (as a long"
        " report or a replica's feedback would): old row versions cannot be pruned",
    )
    add_database_url(parser)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(machine_banner())
    db = os.environ.get("RECKON_BENCH_DB") or "reckon_statement_bench"
    server = scratch_database(args.database_url, db)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_URL"] = ""
    trees = {"this checkout": ROOT}
    databases = {"this checkout": os.environ["DATABASE_URL"]}
    own_db = f"{db}_baseline"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            if args.baseline:
                tree = Path(scratch) / "baseline"
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(ROOT),
                        "worktree",
                        "add",
                        "--detach",
                        str(tree),
                        args.baseline,
                    ],
                    check=True,
                    capture_output=True,
                )
                trees = {f"baseline {args.baseline}": tree, **trees}
                databases[f"baseline {args.baseline}"] = os.environ["DATABASE_URL"]
                if args.own_schema:
                    url = scratch_database(args.database_url, own_db)
                    os.environ["DATABASE_URL"] = databases["this checkout"]
                    databases[f"baseline {args.baseline}"] = f"{url}/{own_db}"
                    # migrated by the baseline's own code, in a process of its own
                    subprocess.run(
                        [
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--prepare",
                            str(tree),
                            str(args.tenants),
                        ],
                        check=True,
                        cwd=tree,
                        env={**os.environ, "DATABASE_URL": f"{url}/{own_db}"},
                    )
            _prepare(args.tenants)
            with _snapshots_held(databases if args.hold_snapshot else {}):
                _measure(trees, databases, sizes, args)
            _print_hot_updates(databases)
        finally:
            if args.baseline:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
            scratch_drop(server, db)
            if args.baseline and args.own_schema:
                scratch_drop(server, own_db)


def _prepare(tenants: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from metering.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    for i in range(tenants):
        api_key_create(tenant=tenant_create(name=f"bench-{i}"))
    connection.close()


@contextlib.contextmanager
def _snapshots_held(databases: dict[str, str]) -> Iterator[None]:
    """A REPEATABLE READ transaction with its snapshot taken, open in each database for
    the duration: row versions dead after it began cannot be pruned or vacuumed."""
    import psycopg

    with contextlib.ExitStack() as stack:
        for url in dict.fromkeys(databases.values()):
            conn = stack.enter_context(psycopg.connect(url))
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT count(*) FROM metering_tenant")
        yield


def _print_hot_updates(databases: dict[str, str]) -> None:
    """How many of the fold tables' updates were HOT (no new index entries) in each
    database (one line when the checkouts shared one)."""
    import psycopg

    time.sleep(1)  # the workers' last statistics reach the server as they exit
    for url in dict.fromkeys(databases.values()):
        names = [name for name, db in databases.items() if db == url]
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT relname, n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables"
                " WHERE relname = ANY(%s) ORDER BY relname",
                [list(FOLD_TABLES)],
            ).fetchall()
        hot = ", ".join(f"{name} {h}/{n}" for name, h, n in rows)
        print(f"  HOT updates of {' and '.join(names)}: {hot}")


def _measure(
    trees: dict[str, Path], databases: dict[str, str], sizes: list[int], args: argparse.Namespace
) -> None:
    workers: dict[str, Worker] = {}
    cpu: dict[tuple[str, int], list[float]] = {(n, s): [] for n in trees for s in sizes}
    try:
        # started one by one inside the try: one that fails to start does not leak the
        # workers already started (their processes and connections)
        for shard, (name, tree) in enumerate(trees.items(), 1):
            workers[name] = Worker(tree, shard, databases[name])
        for round_ in range(args.rounds):
            for size in sizes:
                # alternate which tree goes first, so neither always runs on warmer caches
                for name, w in list(workers.items())[:: 1 if round_ % 2 == 0 else -1]:
                    cpu[name, size].append(w.run(size, args.statements))
    finally:
        for w in workers.values():
            w.close()
    print(
        f"ledger batch statement, backend CPU, {datetime.now(UTC):%Y-%m-%d},"
        f" {args.rounds} rounds x {args.statements} statements per size, median (min-max) us"
    )
    small, large = min(sizes), max(sizes)
    for name in workers:
        print(f"  {name}")
        for size in sizes:
            values = cpu[name, size]
            print(
                f"    {size:>3} records: {median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"
                f"  per record {median(values) / size:6.1f}"
            )
        if large > small:
            slopes = [
                (b - a) / (large - small)
                for a, b in zip(cpu[name, small], cpu[name, large], strict=True)
            ]
            slope = median(slopes)
            fixed = median(cpu[name, small]) - slope * small
            print(f"    slope {small}->{large}: {slope:.1f} us per record, fixed {fixed:.0f} us")
    if len(workers) == 2:
        (a, b) = workers
        for size in sizes:
            ratios = [y / x - 1 for x, y in zip(cpu[a, size], cpu[b, size], strict=True)]
            fewer = sum(1 for ratio in ratios if ratio < 0)
            print(
                f"  {b} vs {a} at {size}: {median(ratios):+.1%}"
                f" ({min(ratios):+.1%} to {max(ratios):+.1%}, paired by round;"
                f" less CPU in {fewer} of {len(ratios)} rounds)"
            )


if __name__ == "__main__":
    main()
