"""The margin arithmetic of billing.costs.margins (pure): floor prices, gross margins and
the checks on a margin policy. Policies and floors on the database are in test_catalogue.py.

Full-precision checks compare against exact rationals (``fractions.Fraction``): a floor
price rounds once to 50 significant digits, so its relative error is below 1e-49.
"""

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.costs.margins import Margins, floor_price, gross_margin

ONE_ULP_AT_50 = Fraction(1, 10**49)  # bound on the relative error of one 50-digit rounding

costs = st.decimals(min_value=Decimal(0), max_value=Decimal(1_000_000), places=6)
margins = st.decimals(min_value=Decimal(0), max_value=Decimal("0.9999"), places=4)


def _close(value: Decimal, exact: Fraction) -> bool:
    """``value`` equals the exact rational up to one rounding to 50 significant digits."""
    if exact == 0:
        return value == 0
    return abs(Fraction(value) - exact) <= abs(exact) * ONE_ULP_AT_50


def test_floor_price() -> None:
    assert floor_price(Decimal("0.413"), Decimal(0)) == Decimal("0.413")
    assert floor_price(Decimal("0.413"), Decimal("0.5")) == Decimal("0.826")
    assert floor_price(Decimal(3), Decimal("0.25")) == Decimal(4)
    assert _close(floor_price(Decimal(1), Decimal("0.7")), Fraction(10, 3))
    for bad in (Decimal(1), Decimal("1.2"), Decimal("-0.1")):
        with pytest.raises(ValueError):
            floor_price(Decimal(1), bad)


def test_margin_policy_validates() -> None:
    Margins(target_margin=Decimal("0.4"), minimum_margin=Decimal("0.4"))
    for target, minimum in (("0.3", "0.4"), ("1", "0.2"), ("0.5", "-0.1")):
        with pytest.raises(ValueError):
            Margins(target_margin=Decimal(target), minimum_margin=Decimal(minimum))


def test_gross_margin() -> None:
    assert gross_margin(Decimal(10), Decimal(6)) == Decimal("0.4")
    assert gross_margin(Decimal(5), Decimal(6)) == Decimal("-0.2")
    assert gross_margin(Decimal(5), Decimal(0)) == 1
    assert gross_margin(Decimal(0), Decimal(5)) is None
    cost = Decimal("0.413")
    assert gross_margin(floor_price(cost, Decimal("0.35")), cost) == Decimal("0.35")


@given(costs, margins)
def test_floor_price_recovers_the_cost(cost: Decimal, margin: Decimal) -> None:
    price = floor_price(cost, margin)
    assert price >= cost
    recovered = Fraction(price) * (1 - Fraction(margin))
    assert abs(recovered - Fraction(cost)) <= Fraction(cost) * ONE_ULP_AT_50
    with decimal.localcontext(prec=50):
        assert abs(price * (1 - margin) - cost) <= cost * Decimal("1e-48")
