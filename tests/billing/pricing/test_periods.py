from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.pricing.periods import (
    Period,
    calendar_month,
    ceil_hour,
    period_containing,
    segments,
)
from billing.pricing.priced_plan import ComponentPrice, PricePlan
from billing.pricing.proration import prorate_plan


def dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "instant", "start", "end"),
    [
        (1, dt(2026, 11, 23, 8), dt(2026, 11, 1), dt(2026, 12, 1)),
        (1, dt(2026, 12, 31, 23, 59), dt(2026, 12, 1), dt(2027, 1, 1)),
        (15, dt(2026, 11, 14, 23), dt(2026, 10, 15), dt(2026, 11, 15)),
        (15, dt(2026, 11, 15), dt(2026, 11, 15), dt(2026, 12, 15)),  # half-open: start included
        (28, dt(2027, 1, 3), dt(2026, 12, 28), dt(2027, 1, 28)),
    ],
)
def test_period_containing(anchor: int, instant: datetime, start: datetime, end: datetime) -> None:
    assert period_containing(anchor, instant) == Period(start, end)


def test_a_bad_anchor_is_refused() -> None:
    with pytest.raises(ValueError):
        period_containing(29, dt(2026, 1, 1))


def test_segments_clip_to_the_period() -> None:
    period = Period(dt(2026, 11, 1), dt(2026, 12, 1))
    spans = [(dt(2026, 10, 1), dt(2026, 11, 11), "a"), (dt(2026, 11, 11), None, "b")]
    got = segments(period, spans)
    assert [(s.start, s.end, s.item) for s in got] == [
        (dt(2026, 11, 1), dt(2026, 11, 11), "a"),
        (dt(2026, 11, 11), dt(2026, 12, 1), "b"),
    ]
    assert got[0].share_of(period) == Decimal(10) / Decimal(30)
    assert sum(s.share_of(period) for s in got) == 1


def test_ceil_hour() -> None:
    assert ceil_hour(dt(2026, 1, 1, 5)) == dt(2026, 1, 1, 5)
    assert ceil_hour(datetime(2026, 1, 1, 5, 0, 0, 1, tzinfo=UTC)) == dt(2026, 1, 1, 6)


def test_prorate_plan_scales_fees_and_allowances() -> None:
    plan = PricePlan(
        currency="USD",
        base_fee=Decimal("30"),
        minimum_commitment=Decimal("90"),
        components=(
            ComponentPrice(
                key="o",
                token_class="output",
                charge_model="per_unit",
                unit_price=Decimal(1),
                included_tokens=1_000_001,
            ),
        ),
    )
    third = prorate_plan(plan, Decimal(1) / Decimal(3))
    assert third.base_fee * 3 == pytest.approx(Decimal(30))
    assert third.components[0].included_tokens == 333_333  # rounded down
    assert prorate_plan(plan, Decimal(1)) is plan
    with pytest.raises(ValueError):
        prorate_plan(plan, Decimal(0))


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2026-09", dt(2026, 9, 1), dt(2026, 10, 1)),
        ("2026-12", dt(2026, 12, 1), dt(2027, 1, 1)),
        ("1970-01", dt(1970, 1, 1), dt(1970, 2, 1)),
        ("9998-12", dt(9998, 12, 1), dt(9999, 1, 1)),
    ],
)
def test_calendar_month(value: str, start: datetime, end: datetime) -> None:
    assert calendar_month(value) == Period(start, end)


@pytest.mark.parametrize(
    "value",
    [
        "9999-12",
        "9999-01",
        "0000-01",
        "1969-12",
        "2026-13",
        "2026-00",
        "2026-9",
        "26-09",
        "2026-09-01",
        " 2026-09",
        "2026-\x0009",
        "２０２６-０９",
        "",
    ],
)
def test_calendar_month_refuses_what_it_cannot_represent(value: str) -> None:
    with pytest.raises(ValueError):
        calendar_month(value)
