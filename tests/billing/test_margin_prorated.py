"""Margins of prorated months (review #1): a subscription starting mid-month and a plan
change mid-month rate fine (the rating divides a period into segments, which must not
run in the EXACT context the sums use), and a month's days still sum to margin_report
exactly. Also: the series' cache sees a subscription edited in place (review #6)."""

from datetime import timedelta
from decimal import Decimal, localcontext

import pytest

from billing.costs.provider_costs import EXACT
from billing.models import Subscription
from billing.period_rating import period_rate
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from billing.pricing.periods import Period
from billing.reports import GROUPINGS, margin_report, margin_series
from metering.models import Tenant
from tests.billing.routed_world import NOV, T0, RoutedWorld, routed_world
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
OCT = Period(T0, NOV)
LATE_START = T0 + timedelta(days=10, hours=3)  # 2026-10-11 03:00
CHANGE_AT = T0 + timedelta(days=20, hours=5)  # 2026-10-21 05:00


def pro_version():  # type: ignore[no-untyped-def]
    return plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="pro", name="Pro"),
            currency="USD",
            effective_from=T0,
            base_fee=Decimal(7),
            components=[
                {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal(3)},
                {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal(1)},
            ],
        )
    )


def prorated_world() -> tuple[RoutedWorld, Tenant]:
    """routed_world (subscribed from T0), whose tenant changes to "pro" on Oct 21 05:00,
    and a second tenant subscribed to "pro" from Oct 11 03:00, both with usage on
    both sides of those instants."""
    world = routed_world()
    pro = pro_version()
    late = ApiKeyFactory()
    subscription_create(tenant=late.tenant, plan_version=pro, starts_at=LATE_START)
    subscription_change_plan(
        subscription=Subscription.objects.get(tenant=world.key.tenant),
        plan_version=pro,
        at=CHANGE_AT,
    )
    for day, output in [(15, 777_777), (25, 1_234_567)]:
        at = T0 + timedelta(days=day, hours=1)
        write_usage(
            world.key,
            at,
            world.mi_rate,
            route_id=world.mi.pk,
            output_tokens=output,
            reasoning_tokens=333_333,
        )
        write_usage(late, at, world.h100_rate, output_tokens=output // 7)
    write_usage(late, T0 + timedelta(days=4), world.h100_rate, output_tokens=10_000)
    return world, late.tenant


def test_the_world_is_prorated() -> None:
    """The premise: both tenants' October ratings have segments (rated in a normal
    context, as invoices are)."""
    world, late = prorated_world()
    assert len(period_rate(tenant_id=world.key.tenant_id, period=OCT).lines) > 2
    assert period_rate(tenant_id=late.pk, period=OCT).lines


def test_margin_report_of_a_prorated_month() -> None:
    world, late = prorated_world()
    rows = margin_report(period=OCT)
    tenants = {r.key[0] for r in rows}
    assert {str(world.key.tenant_id), str(late.pk)} <= tenants
    with localcontext(EXACT):
        revenue = sum((r.revenue_usd for r in rows), Decimal(0))
    # all revenue the two ratings give, allocated (whatever was not served is a fee row)
    rated = [period_rate(tenant_id=t, period=OCT) for t in (world.key.tenant_id, late.pk)]
    with localcontext(EXACT):
        assert revenue == sum((line.amount_exact for r in rated for line in r.lines), Decimal(0))
    assert revenue > 0


@pytest.mark.parametrize("group_by", GROUPINGS)
def test_a_prorated_months_days_sum_to_its_margin_report_exactly(group_by: str) -> None:
    prorated_world()
    series = margin_series(since=T0, until=NOV, granularity="day", group_by=group_by)
    assert len(series.buckets) == 31
    report = [r for r in margin_report(period=OCT, group_by=(group_by,)) if r.kind == "usage"]
    assert {c.group for c in series.rows} == {r.key[0] for r in report}
    for row in report:
        cells = [c for c in series.rows if c.group == row.key[0]]
        with localcontext(EXACT):
            assert (
                sum((c.revenue_usd for c in cells), Decimal(0)),
                sum((c.cost_usd for c in cells), Decimal(0)),
                sum((c.reasoning_cost_usd for c in cells), Decimal(0)),
            ) == (row.revenue_usd, row.cost_usd, row.reasoning_cost_usd), row.key
    monthly = margin_series(since=T0, until=NOV, granularity="month", group_by=group_by)
    with localcontext(EXACT):
        assert monthly.totals[0].revenue_usd == sum((r.revenue_usd for r in report), Decimal(0))


def test_the_series_sees_a_subscription_edited_in_place() -> None:
    """Review #6: ends_at set on an existing row (a shell, a data fix) changes the cached
    month's fingerprint, so the next series is the uncached report's."""
    world, late = prorated_world()
    before = margin_series(since=T0, until=NOV, granularity="month", group_by="tenant")
    subscription = Subscription.objects.get(tenant=late)
    subscription.ends_at = T0 + timedelta(days=20)
    subscription.save(update_fields=["ends_at"])
    after = margin_series(since=T0, until=NOV, granularity="month", group_by="tenant")
    report = margin_report(period=OCT, group_by=("tenant",))
    late_revenue = {r.key[0]: r.revenue_usd for r in report}[str(late.pk)]
    mine = {c.group: c.revenue_usd for c in after.rows}
    assert mine[str(late.pk)] == late_revenue
    assert late_revenue != {c.group: c.revenue_usd for c in before.rows}[str(late.pk)]
    # a plan version swapped in place (the same count and pks) is seen too
    subscription.plan_version = Subscription.objects.get(
        tenant=world.key.tenant, ends_at__isnull=False
    ).plan_version
    subscription.save(update_fields=["plan_version"])
    swapped = margin_series(since=T0, until=NOV, granularity="month", group_by="tenant")
    report = margin_report(period=OCT, group_by=("tenant",))
    assert {c.group: c.revenue_usd for c in swapped.rows}[str(late.pk)] == {
        r.key[0]: r.revenue_usd for r in report
    }[str(late.pk)]
    assert {c.group: c.revenue_usd for c in swapped.rows}[str(late.pk)] != late_revenue
