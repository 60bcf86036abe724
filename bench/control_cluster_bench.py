"""Spend control on a Redis Cluster against one Redis, in one run: admit + settle pairs per
second through the proxy's own ControlStore, exact path (one script each) and leased.

    make bench-control-cluster   # or: .venv/bin/python bench/control_cluster_bench.py

The cluster is three `redis-server --cluster-enabled yes` nodes on loopback, started and
stopped by the bench (tests/redis_cluster.py); the baseline is REDIS_URL (default
redis://127.0.0.1:6379/0; its keys are tagged `rk:{bench-…}` and deleted after). Each
round runs every case on both, in alternating order: `--callers` concurrent callers on
one event loop, each a tenant of its own (so the cluster's keys spread over all nodes),
one budget and one rate window per call, for `--duration` seconds. Prints the machine
first (CPUs, memory, load: client and servers share them), then median / min / max
pairs/s over the rounds.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.stats import columns, columns_header, machine_banner  # noqa: E402


async def pairs_per_second(
    url: str, *, callers: int, duration: float, lease_calls: int, run: str
) -> float:
    from metering.control.scopes import BudgetCost, BudgetScope, Grant, RateScope
    from metering.control.store import ControlStore

    store = ControlStore(url, lease_calls=lease_calls)
    done = 0

    async def caller(i: int) -> None:
        nonlocal done
        tenant = f"bench-{run}-{i}"
        budget = BudgetScope(
            f"rk:{{{tenant}}}:spend:tenant:{tenant}:total", "spend", "bench", 10**18, 600,
            lambda: 0,
        )  # fmt: skip
        rate = RateScope("tenant", tenant, 10**9, 10**12, tenant_id=tenant)
        cost = BudgetCost(1_000_000, 0)
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            admitted = await store.admit(
                budgets=[budget], costs=[cost], grant=Grant(1, 1), rates=[rate], est_tokens=10,
                load_in_thread=_direct,
            )  # fmt: skip
            settled = store.settle(
                budgets=[budget], holds=[cost.fixed], actuals=[400_000], rates=[rate],
                token_delta=0, generations=admitted.generations, lease=admitted.lease,
            )  # fmt: skip
            if settled is not None:
                await settled
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - started
    await store.close()
    return done / elapsed


async def _direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    print(machine_banner())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from config.redis_clients import redis_client
    from tests.redis_cluster import redis_cluster

    cases = {"exact": 0, "leased (16 calls a slice)": 16}
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory, redis_cluster(Path(directory)) as ports:
        targets = {
            "one Redis": args.redis_url,
            "3-node cluster": f"redis-cluster://127.0.0.1:{ports[0]}",
        }
        for round_ in range(args.rounds):
            order = list(targets.items())
            if round_ % 2:
                order.reverse()
            for case, lease_calls in cases.items():
                for name, url in order:
                    rate = asyncio.run(
                        pairs_per_second(
                            url,
                            callers=args.callers,
                            duration=args.duration,
                            lease_calls=lease_calls,
                            run=uuid.uuid4().hex[:8],
                        )
                    )
                    results.setdefault((case, name), []).append(rate)
        baseline = redis_client(args.redis_url)
        for key in baseline.scan_iter("rk:{bench-*", count=1000):
            baseline.delete(key)

    print(
        f"spend control, admit + settle pairs/s (client and Redis servers share the CPUs),"
        f" {args.callers} callers on one event loop, {args.rounds} rounds of {args.duration:g} s"
    )
    print(f"  {'case':<28}{'target':<17}{columns_header()}")
    for (case, name), values in results.items():
        print(f"  {case:<28}{name:<17}{columns(values, 0)}")


if __name__ == "__main__":
    main()
