"""What loading a caller's context costs: `caller_context_load` per key, in CPU and wall
time of the loading thread, and in queries.

    make bench-lookup      # or: .venv/bin/python bench/lookup_bench.py [--rounds 7]

Each server process reloads the context of every key in use about once per half
RECKON_AUTH_CACHE_SECONDS (refresh ahead), on one lookup thread that holds the GIL while
it runs Python: what a load costs in CPU is what the event loop loses, per active key.

Everything happens in a scratch database (RECKON_BENCH_DB, default `reckon_lookup_bench`:
dropped, created, migrated, dropped at the end unless --keep). Seeded: `--tenants`
controlled tenants with `--keys` keys each (default 50 x 20 = 1,000 keys), every tenant
on a published plan (input, output, a tiered reasoning component), a prepaid balance that
stops calls, a webhook endpoint with its own thresholds, a monthly spend limit and a rate
limit; every key with its own all-time spend limit, rate limit and reasoning policy (every
fifth with a monthly reasoning budget); four aliases granted to every tenant, one of them
routed over three weighted targets; a serving cost rate per target and learned hold caps.
One more tenant has one plain key (no plan, no limits, one alias).

The loader is the one the server builds (metering.proxy.callers.CallerLoader, which
shares a tenant's part of the context across its keys for one refresh period; on an
older commit, `caller_context_load`). Cases, interleaved in every round:
- plain key, controlled key: `--loads` loads of one key, back to back, per load: "cold"
  forgets what is shared before each load (a key alone in its tenant: every refresh
  reads everything), "warm" does not (another key of the tenant was just loaded);
- a sweep of `--sweep` keys of one tenant, and of every key (`--tenants` x `--keys`):
  each key loaded once, in turn, as the lookup thread refreshes them; per key and the
  whole sweep's CPU (the lookup thread's share of one core per refresh period when every
  key is in use).
CPU is the loading thread's own (time.thread_time: Python, the ORM and the driver; not
PostgreSQL's). Every figure is the median with min and max over the rounds.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch_database, scratch_drop  # noqa: E402
from bench.stats import add_database_url, columns, columns_header, machine_banner  # noqa: E402

DB = os.environ.get("RECKON_BENCH_DB") or "reckon_lookup_bench"
ALIASES = ("lb-reasoner", "lb-chat", "lb-coder", "lb-embedder")
ROUTED = "lb-reasoner"
TARGETS = (("t0", 50, "h100"), ("t1", 30, "h100"), ("t2", 20, "mi300"))  # name, weight, hw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--keys", type=int, default=20, help="keys per tenant")
    parser.add_argument("--loads", type=int, default=200, help="loads of one key per round")
    parser.add_argument("--sweep", type=int, default=100, help="keys of one tenant swept")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner())
    server = scratch_database(args.database_url, DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("RECKON_ENV", "development")
    os.environ["LB_UPSTREAM_KEY"] = "bench-key"
    try:
        run(args)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            scratch_drop(server, DB)


def seed(tenants: int, keys: int, sweep: int) -> dict[str, list[str]]:
    """The key digests of each case (seeded once, read by every round)."""
    from billing.balances import balance_account_open, balance_credit
    from billing.models import WebhookEndpoint
    from billing.plans import (
        plan_create,
        plan_version_create,
        plan_version_publish,
        subscription_create,
    )
    from metering.ledger.record import Rates
    from metering.models import (
        Alias,
        HoldCap,
        RateLimit,
        ReasoningPolicy,
        Route,
        SpendLimit,
    )
    from metering.services import api_key_create, serving_cost_rate_create, tenant_create

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for alias_name in ALIASES:
        routed = alias_name == ROUTED
        alias = Alias.objects.create(
            name=alias_name, policy="weighted" if routed else "fallback", max_attempts=2
        )
        for name, weight, accelerator in TARGETS if routed else (("default", 100, "h100"),):
            route = Route.objects.create(
                alias=alias,
                name=name,
                weight=weight,
                provider="openai",
                base_url="http://127.0.0.1:9/v1",
                upstream_model="sim-reasoner",
                api_key_env="LB_UPSTREAM_KEY",
                accelerator=accelerator,
                first_byte_timeout_ms=30_000,
            )
            serving_cost_rate_create(
                alias=alias_name,
                accelerator=accelerator,
                effective_from=t0,
                rates=Rates(
                    Decimal("0.11"),
                    Decimal("0.44"),
                    Decimal("0.44"),
                    Decimal("0.011"),
                    Decimal("0.2"),
                ),
                source={},
                route_id=route.pk,
            )
        HoldCap.objects.create(
            alias=alias_name, p99_output_tokens=4000, samples=500, computed_at=t0
        )
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="lookup-bench", name="Lookup bench"),
            currency="USD",
            effective_from=t0,
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.10")},
                {
                    "token_class": "output",
                    "charge_model": "per_unit",
                    "unit_price": Decimal("4.40"),
                },
                {
                    "token_class": "reasoning",
                    "charge_model": "graduated",
                    "tiers": [
                        {"up_to": 1_000_000, "unit_price": Decimal("4.40")},
                        {"up_to": None, "unit_price": Decimal("3.30")},
                    ],
                },
            ],
        )
    )
    cases: dict[str, list[str]] = {"all": []}
    for t in range(tenants):
        tenant = tenant_create(name=f"lookup-bench-{t}")
        tenant.allowed_aliases.add(*Alias.objects.filter(name__in=ALIASES))
        subscription_create(tenant=tenant, plan_version=version, starts_at=t0)
        balance_account_open(tenant_id=tenant.id)
        balance_credit(
            tenant_id=tenant.id, kind="top_up", amount=Decimal("1000"), idempotency_key="seed"
        )
        WebhookEndpoint.objects.create(
            tenant=tenant, url="https://example.com/hook", secret="s", thresholds=[75, 90]
        )
        SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("1000000"))
        RateLimit.objects.create(tenant=tenant, requests_per_minute=1_000_000)
        for a in ALIASES[:2]:
            HoldCap.objects.create(
                tenant=tenant, alias=a, p99_output_tokens=2000, samples=200, computed_at=t0
            )
        digests = []
        for k in range(max(keys, sweep) if t == 0 else keys):
            api_key = api_key_create(tenant=tenant).api_key
            SpendLimit.objects.create(
                tenant=tenant, api_key=api_key, window="total", amount_usd=Decimal("5000")
            )
            RateLimit.objects.create(
                tenant=tenant, api_key=api_key, requests_per_minute=600, tokens_per_minute=10**6
            )
            ReasoningPolicy.objects.create(
                api_key=api_key,
                max_output_tokens=100_000,
                allowed_efforts=["low", "medium", "high"],
                monthly_reasoning_tokens=10**9 if k % 5 == 0 else None,
            )
            digests.append(api_key.key_hash)
        if t == 0:
            cases["controlled"] = digests[:1]
            cases["sweep"] = digests[:sweep]
        cases["all"].extend(digests[:keys])
    plain = tenant_create(name="lookup-bench-plain")
    plain.allowed_aliases.add(Alias.objects.get(name=ALIASES[1]))
    cases["plain"] = [api_key_create(tenant=plain).api_key.key_hash]
    return cases


def the_loader() -> tuple[Callable[[str], object], Callable[[], None]]:
    """The loader as the server builds it, and how to forget what it shares across keys
    (the bench runs against older commits too: there, every load reads everything)."""
    from django.conf import settings

    from metering.proxy import callers

    if not hasattr(callers, "CallerLoader"):
        return callers.caller_context_load, lambda: None
    ttl = settings.RECKON_AUTH_CACHE_SECONDS
    loader = callers.CallerLoader(share_for=ttl * callers.REFRESH_AHEAD)
    return loader, loader.clear


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call_command("migrate", verbosity=0)
    cases = seed(args.tenants, args.keys, args.sweep)
    load, shared_clear = the_loader()
    assert load(cases["controlled"][0]) is not None
    assert load(cases["plain"][0]) is not None

    queries: dict[str, int] = {}
    for name in ("plain", "controlled"):
        shared_clear()
        with CaptureQueriesContext(connection) as captured:
            load(cases[name][0])
        queries[name + " cold"] = len(captured)
        with CaptureQueriesContext(connection) as captured:
            load(cases[name][0])
        queries[name + " warm"] = len(captured)

    per_load: dict[str, list[float]] = {}  # case -> per-round median of a load's CPU, µs
    wall: dict[str, list[float]] = {}
    sweep_cpu: dict[str, list[float]] = {}  # case -> a whole sweep's CPU, ms
    for _ in range(args.rounds):
        for case in ("plain cold", "controlled cold", "controlled warm"):
            name, temperature = case.split()
            cpu_times, wall_times = [], []
            shared_clear()
            for _ in range(args.loads):
                if temperature == "cold":
                    shared_clear()
                c0, w0 = time.thread_time(), time.perf_counter()
                load(cases[name][0])
                cpu_times.append(time.thread_time() - c0)
                wall_times.append(time.perf_counter() - w0)
            per_load.setdefault(case, []).append(statistics.median(cpu_times) * 1e6)
            wall.setdefault(case, []).append(statistics.median(wall_times) * 1e6)
        for name in ("sweep", "all"):
            shared_clear()
            c0, w0 = time.thread_time(), time.perf_counter()
            for digest in cases[name]:
                load(digest)
            cpu, elapsed = time.thread_time() - c0, time.perf_counter() - w0
            per_load.setdefault(name, []).append(cpu / len(cases[name]) * 1e6)
            wall.setdefault(name, []).append(elapsed / len(cases[name]) * 1e6)
            sweep_cpu.setdefault(name, []).append(cpu * 1e3)

    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(",")[0]
    print(
        f"caller_context_load, {version} (client and server share the CPUs), {args.rounds}"
        f" rounds; {args.tenants} tenants x {args.keys} keys, {len(ALIASES)} aliases"
        f" ({ROUTED} over {len(TARGETS)} targets)"
    )
    print(
        "queries per load: "
        + ", ".join(f"{name} {count}" for name, count in queries.items())
        + " (cold: nothing shared yet; warm: another key of the tenant loaded < 1 s ago)"
    )
    labels = {
        "plain cold": f"plain key, {args.loads} loads, cold",
        "controlled cold": f"controlled key, {args.loads} loads, cold",
        "controlled warm": f"controlled key, {args.loads} loads, warm",
        "sweep": f"{len(cases['sweep'])} keys of 1 tenant",
        "all": f"{len(cases['all'])} keys of {args.tenants} tenants",
    }
    print(f"\n{'CPU per load (us)':40}{columns_header()}")
    for name, label in labels.items():
        print(f"{label:40}{columns(per_load[name], digits=0)}")
    print(f"\n{'wall per load (us)':40}{columns_header()}")
    for name, label in labels.items():
        print(f"{label:40}{columns(wall[name], digits=0)}")
    print(f"\n{'CPU per sweep, every key once (ms)':40}{columns_header()}")
    for name in ("sweep", "all"):
        print(f"{labels[name]:40}{columns(sweep_cpu[name], digits=1)}")


if __name__ == "__main__":
    main()
