"""Console page-time benchmark: the console's pages over one tenant's month of N usage
records (default 1,000,000; the usage/billing benchmark's 10,000,000 with --records),
served from the hourly rollups, timed as the server spends it.

    make bench-console     # or: .venv/bin/python bench/console_bench.py [--records 10000000]

Data: bench/usage_bench.py's own builder (`prepare`: the big tenant's N records over
October 2026 across 10 keys and 5 aliases, 4 other tenants with N/20 each, rollups folded
and checked), in a scratch database `reckon_console_bench` dropped at the end. On top of
it, so the pages have content: a published tiered plan and the big tenant's subscription
from October 1st, a prepaid top-up, a monthly spend limit, October closed into a
finalized invoice (as the beat closes it, after the grace period), a console member
(owner) of the big tenant and a superuser for the staff pages. The records carry no
serving cost (the builder's accelerators are not in the catalogue): the margin page reads
the same rollups, with zero cost.

Each page is a GET through Django's test client (middleware, session sign-in, the view,
its selectors and template; no network), with the clock at 2026-10-31 12:00 UTC (inside
the data's month, so month-to-date and the default windows cover it), timed over
`--rounds` rounds after 2 warm-up calls (the second counts the SQL queries); `cpu` is
the CPU time of this process (Django's side, without PostgreSQL's), steadier than wall
time on a busy machine. The machine (CPUs, memory, load) is printed first; each page's
wall and CPU times as median, min and max. A page not built yet (404) is reported as
such; any other status fails the run.
Target: median < 300 ms per page (judged on the slowest page's median).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import usage_bench  # noqa: E402 - the data builder this benchmark reuses
from bench.scratch import scratch_database  # noqa: E402
from bench.stats import (  # noqa: E402
    add_database_url,
    columns,
    columns_header,
    machine_banner,
    target_line,
    target_met,
)

DB = "reckon_console_bench"
CLOCK = datetime(2026, 10, 31, 12, tzinfo=UTC)
TARGET_MS = 300.0
# (label, URL name, query, as staff)
PAGES: list[tuple[str, str, dict[str, str], bool]] = [
    ("overview", "console:overview", {}, False),
    ("usage, day, 30 days", "console:usage", {"granularity": "day"}, False),
    ("usage, hour, 48 h", "console:usage", {"granularity": "hour"}, False),
    (
        "usage.csv, by class, day",
        "console:usage-csv",
        {"granularity": "day", "chart": "usage-by-class"},
        False,
    ),
    (
        "usage.csv, by key, day",
        "console:usage-csv",
        {"granularity": "day", "chart": "usage-by-key"},
        False,
    ),
    ("keys", "console:keys", {}, False),
    ("invoices", "console:invoices", {}, False),
    ("invoice detail", "console:invoice", {}, False),
    ("balance", "console:balance", {}, False),
    ("staff margins", "console:staff-margins", {}, True),
    ("staff tenants", "console:staff-tenants", {}, True),
]


class Counting:
    """A database execute wrapper that notes every statement."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.into.append(sql)
        return execute(sql, params, many, context)


def content(big: Any) -> dict[str, Any]:
    """Plan, subscription, balance, limit, October's invoice, a member and a superuser."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from billing.balances import balance_credit
    from billing.invoicing.close import periods_close
    from billing.plans import (
        plan_create,
        plan_version_create,
        plan_version_publish,
        subscription_create,
    )
    from metering.models import SpendLimit
    from metering.services import tenant_member_set

    def tiers(*prices: tuple[int | None, str]) -> list[dict[str, Any]]:
        return [
            {"up_to": None if u is None else Decimal(u), "unit_price": Decimal(p)}
            for u, p in prices
        ]

    plan = plan_create(code="bench-tiered", name="Bench tiered")
    version = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=usage_bench.START,
        base_fee=Decimal("49"),
        components=[
            {"token_class": "input", "charge_model": "graduated", "tiers": tiers((100, "2"), (None, "1.5"))},
            {"token_class": "output", "charge_model": "graduated", "tiers": tiers((10, "10"), (None, "8"))},
            {"token_class": "reasoning", "charge_model": "graduated", "tiers": tiers((10, "10"), (100, "8"), (None, "6"))},
            {"token_class": "cache_read", "charge_model": "per_unit", "unit_price": Decimal("0.5")},
            {"token_class": "cache_write", "charge_model": "per_unit", "unit_price": Decimal("2.5")},
        ],
    )  # fmt: skip
    version = plan_version_publish(version=version)
    subscription_create(tenant=big, plan_version=version, starts_at=usage_bench.START)
    balance_credit(
        tenant_id=big.pk,
        kind="top_up",
        amount=Decimal("10000"),
        idempotency_key="bench",
        effective_at=usage_bench.START,
    )
    SpendLimit.objects.create(tenant=big, window=SpendLimit.Window.MONTH, amount_usd=Decimal(50000))
    t = time.perf_counter()
    grace = timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS)
    (invoice,) = periods_close(
        tenant_ids=[big.pk], period_start=usage_bench.START, as_of=usage_bench.END + grace
    )
    print(f"October closed: invoice {invoice.number} in {time.perf_counter() - t:.1f} s")
    member = tenant_member_set(tenant=big, username="bench-owner", role="owner").member
    admin = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", None)
    return {"member": member.user, "admin": admin, "invoice": invoice}


def run(args: argparse.Namespace) -> bool:
    import django

    django.setup()
    import time_machine
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    import config.urls  # noqa: F401 - load every module now, not mid-measurement

    settings.ALLOWED_HOSTS = ["*"]
    if args.reuse:
        from django.contrib.auth import get_user_model

        from billing.models import Invoice

        users = get_user_model().objects
        made = {
            "member": users.get(username="bench-owner"),
            "admin": users.get(username="bench-admin"),
            "invoice": Invoice.objects.get(tenant__name="big"),
        }
    else:
        tenants, _created = usage_bench.prepare(args)
        made = content(tenants[0])
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (pg,) = cursor.fetchone()
    print(f"PostgreSQL {pg}")
    member, staff = Client(), Client()
    member.force_login(made["member"])
    staff.force_login(made["admin"])
    print(f"\nclock at {CLOCK:%Y-%m-%d %H:%M} UTC; {args.rounds} rounds after 2 warm-up calls")
    print(f"{'':33}{'wall ms':^24}  {'cpu ms':^24}")
    print(f"{'page':26} {'status':>6}{columns_header(8)}  {columns_header(8)} {'queries':>8}")
    worst: tuple[str, list[float]] = ("no page", [])
    failed = False
    with time_machine.travel(CLOCK, tick=True):
        for label, name, query, as_staff in PAGES:
            kwargs = {"invoice_id": made["invoice"].pk} if name == "console:invoice" else {}
            url = reverse(name, kwargs=kwargs)
            client = staff if as_staff else member

            def get(url: str = url, query: dict[str, str] = query, client: Client = client) -> Any:
                return client.get(url, query, HTTP_HOST="127.0.0.1")

            first = get()
            if first.status_code != 200:
                note = "not built on this branch" if first.status_code == 404 else "not timed"
                print(f"{label:26} {first.status_code:>6}  ({note})")
                failed = failed or first.status_code != 404
                continue
            queries: list[str] = []
            with connection.execute_wrapper(Counting(queries)):
                get()
            times, cpu = [], []
            for _ in range(args.rounds):
                t, c = time.perf_counter(), time.process_time()
                response = get()
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            if not worst[1] or statistics.median(times) > statistics.median(worst[1]):
                worst = (label, times)
            print(
                f"{label:26} {response.status_code:>6}{columns(times, 1, 8)}"
                f"  {columns(cpu, 1, 8)} {len(queries):>8}"
            )
    label, times = worst
    print(f"\n{args.records:,} records of one tenant; the slowest page by median: {label}")
    print(target_line("median per page (slowest page)", times, "<", TARGET_MS, "ms", 1))
    return target_met(times, "<", TARGET_MS) and not failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    add_database_url(parser)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--reuse", action="store_true", help="time against the database a --keep run left"
    )
    args = parser.parse_args()
    print(machine_banner())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if args.reuse:
        server = args.database_url.rsplit("/", 1)[0]
        os.environ["DATABASE_URL"] = f"{server}/{DB}"
    else:
        server = scratch_database(args.database_url, DB)
    try:
        met = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if not (args.keep or args.reuse):
            subprocess.run(
                ["psql", server + "/postgres", "-qc", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"],
                check=True,
            )
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
