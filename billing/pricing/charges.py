"""The charge models: each a small pure function of a quantity in pricing units,
returning ``(amount_exact, tier_charges)`` (see billing/pricing/rate.py for the exact
semantics). Arithmetic runs in a private 80-digit context, whatever the caller's context.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TypeGuard

from billing.pricing.priced_plan import (
    GRADUATED,
    PACKAGE,
    PER_UNIT,
    VOLUME,
    ZERO,
    ComponentPrice,
    Tier,
)

__all__ = [
    "TierCharge",
    "VolumeCliff",
    "charge_graduated",
    "charge_package",
    "charge_per_unit",
    "charge_volume",
    "volume_cliffs",
]

# Private arithmetic context: wide enough to stay exact for any realistic token count and
# price, independent of whatever context the caller has installed.
EXACT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


@dataclass(frozen=True)
class TierCharge:
    tier_index: int  # index into the component's tiers (0 for per_unit and package)
    quantity: Decimal  # units billed in this tier (packages for the package model)
    unit_price: Decimal  # price per unit (per package for the package model)
    flat_fee: Decimal  # flat fee charged for reaching this tier
    amount: Decimal  # quantity * unit_price + flat_fee, exact, never rounded


@dataclass(frozen=True)
class VolumeCliff:
    component_key: str
    boundary: Decimal  # the up_to where the total drops when crossed
    total_at_boundary: Decimal  # total at exactly the boundary (lower tier)
    total_just_above: Decimal  # limit of the total just above it (next tier)
    drop: Decimal  # total_at_boundary - total_just_above, > 0


def _check_number(value: object, what: str) -> Decimal:
    """``value`` as a finite Decimal; floats and other types are refused."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueError(f"{what} must be a Decimal, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{what} must be finite, got {number}")
    return number


def _check_quantity(quantity: Decimal) -> Decimal:
    number = _check_number(quantity, "quantity")
    if number < 0:
        raise ValueError(f"quantity must not be negative, got {number}")
    return number


def tier_problems(tiers: Sequence[Tier]) -> Iterator[tuple[str, str]]:
    """(code, message) for every structural problem of a tier list."""
    if not tiers:
        yield "missing_tiers", "graduated and volume charges need at least one tier"
        return
    previous: Decimal | None = None
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        if tier.up_to is None:
            if not last:
                yield "open_tier_not_last", f"tier {index} is open-ended but is not the last tier"
            continue
        if not is_number(tier.up_to):
            yield "invalid_number", f"tier {index} up_to must be a finite Decimal"
            continue
        bound = Decimal(tier.up_to)
        if bound < 0:
            yield "invalid_tier_bound", f"tier {index} up_to must not be negative"
        if previous is not None and bound <= previous:
            yield (
                "tiers_not_increasing",
                f"tier {index} up_to {plain(bound)} is not above the previous bound {plain(previous)}",
            )
        previous = bound
        if last:
            yield "last_tier_not_open", "last tier must be open-ended"


def _check_tiers(tiers: Sequence[Tier]) -> None:
    for index, tier in enumerate(tiers):
        _check_number(tier.unit_price, f"tier {index} unit_price")
        _check_number(tier.flat_fee, f"tier {index} flat_fee")
    for code, message in tier_problems(tiers):
        raise ValueError(f"{code}: {message}")


def charge_per_unit(
    quantity: Decimal, unit_price: Decimal
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    """``quantity * unit_price``, exact."""
    quantity = _check_quantity(quantity)
    unit_price = _check_number(unit_price, "unit_price")
    amount = EXACT.multiply(quantity, unit_price)
    return amount, (TierCharge(0, quantity, unit_price, ZERO, amount),)


def charge_graduated(
    quantity: Decimal, tiers: Sequence[Tier]
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    """Each reached tier bills its slice of ``quantity`` at its price plus its flat fee.

    Tier 0 is always reached; tier ``i`` is reached when ``quantity > tiers[i-1].up_to``.
    """
    quantity = _check_quantity(quantity)
    _check_tiers(tiers)
    charges: list[TierCharge] = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        if index > 0 and quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        in_tier = max(ZERO, EXACT.subtract(upper, lower))
        amount = EXACT.add(EXACT.multiply(in_tier, tier.unit_price), tier.flat_fee)
        charges.append(TierCharge(index, in_tier, tier.unit_price, tier.flat_fee, amount))
        if tier.up_to is None or quantity <= tier.up_to:
            break
        lower = tier.up_to
    return exact_sum(charge.amount for charge in charges), tuple(charges)


def _volume_tier_index(quantity: Decimal, tiers: Sequence[Tier]) -> int:
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return index
    raise AssertionError("unreachable: the last tier is open")  # pragma: no cover


def charge_volume(
    quantity: Decimal, tiers: Sequence[Tier]
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    """The whole ``quantity`` at the price of the tier it falls in, plus that tier's flat fee."""
    quantity = _check_quantity(quantity)
    _check_tiers(tiers)
    index = _volume_tier_index(quantity, tiers)
    tier = tiers[index]
    amount = EXACT.add(EXACT.multiply(quantity, tier.unit_price), tier.flat_fee)
    return amount, (TierCharge(index, quantity, tier.unit_price, tier.flat_fee, amount),)


def charge_package(
    quantity: Decimal, package_units: Decimal, package_price: Decimal
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    """``ceil(quantity / package_units)`` packages at ``package_price`` each."""
    quantity = _check_quantity(quantity)
    package_units = _check_number(package_units, "package_units")
    package_price = _check_number(package_price, "package_price")
    if package_units <= 0:
        raise ValueError(f"package_units must be positive, got {package_units}")
    packages = EXACT.divide(quantity, package_units).to_integral_value(
        rounding=ROUND_CEILING, context=EXACT
    )
    amount = EXACT.multiply(packages, package_price)
    return amount, (TierCharge(0, packages, package_price, ZERO, amount),)


def component_charge(
    component: ComponentPrice, quantity: Decimal
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    model = component.charge_model
    if model == PER_UNIT:
        return charge_per_unit(quantity, component.unit_price)
    if model == GRADUATED:
        return charge_graduated(quantity, component.tiers)
    if model == VOLUME:
        return charge_volume(quantity, component.tiers)
    if model == PACKAGE:
        return charge_package(quantity, component.package_units, component.unit_price)
    raise ValueError(f"unknown charge model {model!r}")


def volume_cliffs(component: ComponentPrice) -> list[VolumeCliff]:
    """Boundaries where going just over ``up_to`` lowers a volume component's total.

    For each bound ``b = tiers[i].up_to`` (not the last tier) the total at ``b`` (tier i)
    is compared with the limit just above it (``b * price[i+1] + flat[i+1]``). Components
    that are not volume-priced have no cliffs.
    """
    if component.charge_model != VOLUME:
        return []
    _check_tiers(component.tiers)
    cliffs: list[VolumeCliff] = []
    tiers = component.tiers
    for index in range(len(tiers) - 1):
        boundary = tiers[index].up_to
        assert boundary is not None  # only the last tier is open
        nxt = tiers[index + 1]
        at = EXACT.add(EXACT.multiply(boundary, tiers[index].unit_price), tiers[index].flat_fee)
        above = EXACT.add(EXACT.multiply(boundary, nxt.unit_price), nxt.flat_fee)
        if above < at:
            cliffs.append(
                VolumeCliff(component.key, boundary, at, above, EXACT.subtract(at, above))
            )
    return cliffs


def is_number(value: object) -> TypeGuard[Decimal | int]:
    """A finite Decimal or int (floats are never money)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, Decimal | int)
        and Decimal(value).is_finite()
    )


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def plain(value: Decimal) -> str:
    """A Decimal without exponent notation or trailing zeros: 1E+4 → "10000"."""
    return format(Decimal(value).normalize(EXACT), "f")
