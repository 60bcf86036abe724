"""margin_series: the margin report over time. A whole month's buckets sum exactly to
margin_report for that month (same allocation, exact rests), whatever the grouping."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest

from billing.costs.provider_costs import EXACT
from billing.models import Subscription
from billing.plans import subscription_create
from billing.pricing.periods import Period
from billing.reports import FEES, GROUPINGS, ROUNDED, margin_report, margin_series
from config.errors import ApplicationError
from tests.billing.routed_world import NOV, T0, RoutedWorld, routed_world
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
DEC = datetime(2026, 12, 1, tzinfo=UTC)


def spread_world() -> RoutedWorld:
    """routed_world's October, plus usage on other days in awkward amounts (shares that
    do not divide evenly), in November too, and a second tenant who has no plan."""
    world = routed_world()
    for day, output, reasoning in [(5, 777_777, 333_333), (11, 1_234_567, 0), (30, 1, 7)]:
        write_usage(
            world.key,
            T0 + timedelta(days=day, hours=23),
            world.mi_rate,
            route_id=world.mi.pk,
            output_tokens=output,
            reasoning_tokens=reasoning,
        )
    write_usage(
        world.key, T0 + timedelta(days=5), world.h100_rate, route_id=world.h100.pk, output_tokens=3
    )
    write_usage(world.key, NOV + timedelta(days=2), world.h100_rate, output_tokens=999_999)
    write_usage(world.key, NOV + timedelta(days=9), world.h100_rate, reasoning_tokens=123_457)
    write_usage(ApiKeyFactory(), T0 + timedelta(days=8), world.h100_rate, output_tokens=10_000)
    return world


def summed(series_rows, group: str) -> tuple[Decimal, Decimal, Decimal]:  # type: ignore[no-untyped-def]
    cells = [c for c in series_rows if c.group == group]
    with localcontext(EXACT):  # the parts carry up to 28 significant digits each
        return (
            sum((c.revenue_usd for c in cells), Decimal(0)),
            sum((c.cost_usd for c in cells), Decimal(0)),
            sum((c.reasoning_cost_usd for c in cells), Decimal(0)),
        )


@pytest.mark.parametrize("group_by", GROUPINGS)
def test_a_months_days_sum_to_its_margin_report_exactly(group_by: str) -> None:
    spread_world()
    for start, end in [(T0, NOV), (NOV, DEC)]:
        series = margin_series(since=start, until=end, granularity="day", group_by=group_by)
        report = [
            r
            for r in margin_report(period=Period(start, end), group_by=(group_by,))
            if r.kind == "usage"
        ]
        assert {c.group for c in series.rows} == {r.key[0] for r in report}
        for row in report:
            assert summed(series.rows, row.key[0]) == (
                row.revenue_usd,
                row.cost_usd,
                row.reasoning_cost_usd,
            ), row.key
        assert len(series.buckets) == (end - start).days


def test_a_share_follows_the_days_its_tokens_were_served() -> None:
    spread_world()
    series = margin_series(since=T0, until=NOV, group_by="target")
    mi = {c.start.day: c for c in series.rows if c.group == "reasoner/mi"}
    assert sorted(mi) == [4, 6, 12, 31]
    # Day 12 (1,234,567 output at $4/M, no reasoning) earns its tokens' part of mi's share
    # of the output line.
    assert mi[12].revenue_usd == Decimal("4.938268")
    assert mi[12].cost_usd == Decimal("0.6172835")  # 1,234,567 output at $0.5/M
    assert mi[12].reasoning_cost_usd == 0
    h100 = {c.start.day: c.cost_usd for c in series.rows if c.group == "reasoner/h100"}
    assert h100 == {4: Decimal(3), 6: Decimal("0.000003")}


def test_fees_accrue_evenly_over_their_month() -> None:
    spread_world()
    series = margin_series(since=T0, until=NOV, group_by="alias")
    fees = [c for c in series.rows if c.group == FEES]
    assert len(fees) == 31
    assert fees[0].revenue_usd == ROUNDED.divide(Decimal(5), 31)
    with localcontext(EXACT):
        assert sum((c.revenue_usd for c in fees), Decimal(0)) == 5


def test_months_and_a_clipped_window() -> None:
    spread_world()
    monthly = margin_series(since=T0, until=DEC, granularity="month", group_by="accelerator")
    assert monthly.buckets == [T0, NOV]
    for month, (start, end) in zip(monthly.totals, [(T0, NOV), (NOV, DEC)], strict=True):
        report = margin_report(period=Period(start, end), group_by=("accelerator",))
        with localcontext(EXACT):
            assert month.revenue_usd == sum((r.revenue_usd for r in report), Decimal(0))
            assert month.cost_usd == sum((r.cost_usd for r in report), Decimal(0))
    clipped = margin_series(since=T0 + timedelta(days=10), until=NOV + timedelta(days=5))
    assert clipped.buckets[0] == T0 + timedelta(days=10) and len(clipped.buckets) == 26
    assert {c.start for c in clipped.rows} >= {T0 + timedelta(days=11), NOV + timedelta(days=2)}
    assert all(T0 + timedelta(days=10) <= c.start < NOV + timedelta(days=5) for c in clipped.rows)
    empty = [t for t in clipped.totals if t.start == T0 + timedelta(days=20)]
    assert empty[0].cost_usd == 0 and empty[0].revenue_usd > 0  # fees accrue every day


def test_tenants_are_labelled_by_name() -> None:
    world = spread_world()
    series = margin_series(since=T0, until=NOV, group_by="tenant")
    assert series.group_labels[str(world.key.tenant_id)] == world.key.tenant.name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"group_by": "planet"},
        {"granularity": "hour"},
        {"since": T0 + timedelta(hours=1)},
        {"since": NOV, "until": T0},
    ],
)
def test_bad_windows_and_groupings_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"since": T0, "until": NOV, **kwargs}
    with pytest.raises(ApplicationError):
        margin_series(**args)  # type: ignore[arg-type]


def test_a_month_already_computed_sees_new_usage_and_subscriptions() -> None:
    """A month's margins are kept under the fingerprint of their rollups and the
    subscriptions: a record folded into an existing rollup row changes it."""
    world = spread_world()
    first = margin_series(since=T0, until=NOV)
    day = T0 + timedelta(days=3, minutes=5)  # a rollup row routed_world already wrote
    write_usage(world.key, day, world.mi_rate, route_id=world.mi.pk, output_tokens=1000)
    second = margin_series(since=T0, until=NOV)
    with localcontext(EXACT):
        assert second.totals[3].cost_usd - first.totals[3].cost_usd == Decimal("0.0005")
        assert second.totals[3].revenue_usd - first.totals[3].revenue_usd == Decimal("0.004")
    other = ApiKeyFactory()
    version = Subscription.objects.get(tenant=world.key.tenant).plan_version
    subscription_create(tenant=other.tenant, plan_version=version, starts_at=T0)
    third = margin_series(since=T0, until=NOV, group_by="tenant")
    assert str(other.tenant_id) in {c.group for c in third.rows}  # its base fee
