"""The quick start's demo data (`billing.demo.demo_seed`): idempotent, written through the
ledger's own path (rollups = a raw scan, records costed as the proxy costs them), its
previous month closed into a finalized invoice that rates exactly the seeded usage; on
PostgreSQL here and on SQLite (the embedded default) in a process of its own."""

import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum

from billing.demo import DEMO_PLAN_CODE, demo_seed
from billing.invoicing.recompute import invoice_recompute
from billing.models import (
    Alert,
    BalanceEntry,
    Deployment,
    Invoice,
    InvoiceLine,
    MarginPolicy,
    PlanVersion,
    Subscription,
)
from billing.period_rating import period_rate
from billing.pricing.periods import Period
from metering.calendar import month_start
from metering.demo import DEMO_ALIASES, DEMO_KEYS
from metering.models import (
    ApiKey,
    RouteTargetHour,
    ServingCostRate,
    SpendLimit,
    Tenant,
    UsageRecord,
    UsageRollup,
)
from tests.sqlite_helpers import run_on_sqlite
from tests.usage_helpers import rollups_vs_raw_scan, route_targets_vs_raw_scan, serving_cost_at

SIM = "http://127.0.0.1:8100"


def the_counts() -> dict[str, Any]:
    """Every kind of row the seed makes, and the ledger's sums."""
    return {
        "plan_versions": PlanVersion.objects.count(),
        "subscriptions": Subscription.objects.count(),
        "deployments": Deployment.objects.count(),
        "cost_rates": ServingCostRate.objects.count(),
        "margin_policies": MarginPolicy.objects.count(),
        "balance_entries": BalanceEntry.objects.count(),
        "spend_limits": SpendLimit.objects.count(),
        "keys": ApiKey.objects.count(),
        "records": UsageRecord.objects.count(),
        "rollup_requests": UsageRollup.objects.aggregate(s=Sum("requests"))["s"],
        "target_hours": RouteTargetHour.objects.aggregate(s=Sum("attempts"))["s"],
        "invoices": Invoice.objects.count(),
        "invoice_lines": InvoiceLine.objects.count(),
        "alerts": Alert.objects.count(),
    }


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.django_db(transaction=True)
def test_seeding_twice_adds_nothing_and_later_adds_only_the_new_hours(now: datetime) -> None:
    first = demo_seed(simulator_url=SIM, now=now)
    counts = the_counts()
    assert first.records_written == counts["records"] > 2000
    assert counts["plan_versions"] == counts["subscriptions"] == 1
    assert counts["deployments"] == counts["cost_rates"] == counts["margin_policies"] == 3
    assert counts["balance_entries"] >= 2 and counts["invoices"] >= 1

    again = demo_seed(simulator_url=SIM, now=now)
    assert again.records_written == 0
    assert the_counts() == counts
    assert again.history_since == first.history_since

    later = now + timedelta(hours=3)
    third = demo_seed(simulator_url=SIM, now=later)
    assert third.records_written == UsageRecord.objects.filter(started_at__gte=now).count()
    assert UsageRecord.objects.filter(started_at__lt=now).count() == counts["records"]
    assert PlanVersion.objects.count() == 1
    rollups_vs_raw_scan()


@pytest.mark.django_db(transaction=True)
def test_the_history_is_written_as_the_proxy_writes_it(now: datetime) -> None:
    seeded = demo_seed(simulator_url=SIM, now=now)
    tenant = seeded.tenant
    assert tenant.name == "demo"
    records = list(UsageRecord.objects.filter(tenant=tenant))
    assert min(r.started_at for r in records) >= seeded.history_since
    assert max(r.started_at for r in records) < now
    assert {r.alias for r in records} == set(DEMO_ALIASES)
    assert len({r.api_key_id for r in records}) == len(DEMO_KEYS)
    rates = ServingCostRate.objects.in_bulk()
    completed = [r for r in records if r.status == "completed"]
    assert len(completed) > 0.95 * len(records)
    for r in completed:
        rate = rates[r.cost_rate_id]
        assert (r.alias, r.accelerator) == (rate.alias, rate.accelerator)
        counts = {f: getattr(r, f) for f in ("input_tokens", "cached_input_tokens")}
        counts |= {f: getattr(r, f) for f in ("cache_write_tokens", "output_tokens")}
        counts["reasoning_tokens"] = r.reasoning_tokens
        assert (r.serving_cost_usd, r.reasoning_cost_usd) == serving_cost_at(rate, counts)
        assert r.spend_usd is not None and r.spend_usd > r.serving_cost_usd
        # hidden reasoning is 4-10x the visible output (floor of the ratio drawn)
        assert 4 * r.output_tokens - 1 <= r.reasoning_tokens <= 10 * r.output_tokens
        assert r.request_id.version == 7 and r.request_id.int & 0xF == 1  # attempt 1
        assert r.flags == [] and r.reasoning_source == "reported"
    rollups_vs_raw_scan()
    route_targets_vs_raw_scan()
    # each key was last used at its newest record
    for key in ApiKey.objects.filter(tenant=tenant, name__in=[k.name for k in DEMO_KEYS]):
        newest = max(r.finished_at for r in records if r.api_key_id == key.pk)
        assert key.last_used_at == newest


def graduated(tokens: int, tiers: list[tuple[Decimal | None, Decimal]]) -> Decimal:
    """Graduated tiers over units of 1M tokens, written out here (not billing's code)."""
    units, below, total = Decimal(tokens) / Decimal(1_000_000), Decimal(0), Decimal(0)
    for up_to, price in tiers:
        top = units if up_to is None else min(units, up_to)
        if top > below:
            total += (top - below) * price
        below = up_to if up_to is not None else units
    return total


@pytest.mark.django_db(transaction=True)
def test_the_previous_month_is_a_finalized_invoice_of_exactly_the_seeded_usage(
    now: datetime,
) -> None:
    seeded = demo_seed(simulator_url=SIM, now=now)
    tenant: Tenant = seeded.tenant
    # the last calendar month whose grace period (24 h) is over at `now`
    end = month_start(now - timedelta(hours=24))
    start = month_start(end - timedelta(days=1))
    invoice = Invoice.objects.get(tenant=tenant, period_start=start)
    assert invoice.status == Invoice.Status.FINALIZED and invoice.number
    assert invoice.period_end == end
    lines = list(invoice.lines.select_related("plan_version__plan"))
    assert {li.plan_version.plan.code for li in lines if li.plan_version} == {DEMO_PLAN_CODE}
    charged = sum(line.amount_minor for line in lines if line.kind != "credit")
    credit = sum(line.amount_minor for line in lines if line.kind == "credit")
    assert charged == period_rate(tenant_id=tenant.pk, period=Period(start, end)).total_minor
    assert invoice.total_minor == charged + credit >= 0
    assert invoice_recompute(invoice=invoice) == []  # the raw ledger gives the same lines
    # one line by hand: hidden reasoning on sim-reasoner, graduated 40 / 32 / 24 USD per 1M
    if seeded.history_since <= start:  # a whole period (not prorated)
        reasoning = UsageRecord.objects.filter(
            tenant=tenant,
            alias="sim-reasoner",
            flags=[],
            started_at__gte=start,
            started_at__lt=end,
        ).aggregate(s=Sum("reasoning_tokens"))["s"]
        (line,) = [
            li for li in lines if li.token_class == "reasoning" and li.aliases == ["sim-reasoner"]
        ]
        expected = graduated(
            reasoning, [(Decimal(1), Decimal(40)), (Decimal(3), Decimal(32)), (None, Decimal(24))]
        )
        assert line.tokens == reasoning
        assert line.amount_minor == int((expected * 100).quantize(Decimal(1), ROUND_HALF_UP))
    # the prepaid credit paid what it could, and alerts are recorded for the overview
    assert credit < 0
    assert Alert.objects.filter(tenant=tenant).exists() or seeded.alerts_fired == 0


SQLITE_SCRIPT = """
import json, django
from datetime import UTC, datetime
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from billing.demo import demo_seed
from tests.billing.test_demo import the_counts
from django.db.models import Q, Sum
from metering.ledger.rollups import ROLLUP_SUMS
from metering.models import UsageRecord, UsageRollup
now = datetime.fromisoformat(%r)
first = demo_seed(simulator_url="http://127.0.0.1:8100", now=now)
counts = the_counts()
second = demo_seed(simulator_url="http://127.0.0.1:8100", now=now)
# SQLite sums decimals as floats: the exact USD check runs on PostgreSQL; the counts here
tokens = [n for n in ROLLUP_SUMS if not n.endswith("_usd")]
rolled = UsageRollup.objects.aggregate(**{n: Sum(n) for n in tokens})
raw = UsageRecord.objects.filter(flags=[]).aggregate(**{n: Sum(n) for n in tokens})
assert rolled == raw and tokens, (rolled, raw)
print(json.dumps({"first": counts, "second": the_counts(), "written": [first.records_written,
    second.records_written], "invoices": [i.status for i in second.invoices],
    "seconds": first.seconds}))
"""


def test_the_demo_seeds_on_sqlite_too(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    out = json.loads(
        run_on_sqlite(SQLITE_SCRIPT % now.isoformat(), tmp_path, migrated=True).splitlines()[-1]
    )
    assert out["first"] == out["second"]
    assert out["written"][0] == out["first"]["records"] > 2000 and out["written"][1] == 0
    assert out["invoices"] and set(out["invoices"]) == {"finalized"}
    assert out["seconds"] < 20  # the quick start stays quick


@pytest.mark.django_db
def test_a_tenant_named_demo_that_the_seed_did_not_make_is_refused(now: datetime) -> None:
    from metering.demo import DEMO_TENANT, NotTheDemoTenant
    from metering.services import api_key_create, tenant_create

    real = tenant_create(name=DEMO_TENANT)
    api_key_create(tenant=real, name="production")
    with pytest.raises(NotTheDemoTenant, match="holds no demo data"):
        demo_seed(simulator_url=SIM, now=now)
    assert list(ApiKey.objects.filter(tenant=real).values_list("name", flat=True)) == ["production"]
    assert not Subscription.objects.filter(tenant=real).exists()
    assert not UsageRecord.objects.filter(tenant=real).exists()
    assert not BalanceEntry.objects.filter(account__tenant=real).exists()
    assert not SpendLimit.objects.filter(tenant=real).exists()
    assert not real.allowed_aliases.exists()


@pytest.mark.django_db
def test_the_demo_tenant_of_an_earlier_quick_start_is_seeded_again() -> None:
    from metering.demo import (
        DEMO_TENANT,
        QUICKSTART_KEY_NAME,
        demo_keys_set,
        demo_routes_set,
        demo_tenant_set,
    )
    from metering.services import api_key_create

    aliases = demo_routes_set(simulator_url=SIM)
    # made by `quickstart --no-demo` (its own key only), then seeded
    tenant = demo_tenant_set(aliases=aliases)
    api_key_create(tenant=tenant, name=QUICKSTART_KEY_NAME)
    assert demo_tenant_set(aliases=aliases) == tenant
    demo_keys_set(tenant=tenant)
    # a member then made a key of their own in the console: still the demo tenant
    api_key_create(tenant=tenant, name="my key")
    assert demo_tenant_set(aliases=aliases) == tenant
    assert Tenant.objects.filter(name=DEMO_TENANT).count() == 1
