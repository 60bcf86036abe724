"""What the pricing engine prices: a plan's terms and one period's usage, as frozen
dataclasses, and the one rule for which component covers an alias's tokens.

``PricePlan`` and ``ComponentPrice`` are the engine's view of a published
``billing.models.PlanVersion`` and its ``PriceComponent`` rows
(``billing.selectors.plan_version_pricing`` builds them). Pure: no ORM, no I/O; the
token-class names come from their one home, metering/usage.py (itself pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType

from metering.usage import TOKEN_CLASSES

__all__ = [
    "CHARGE_MODELS",
    "TOKEN_CLASSES",
    "ComponentPrice",
    "PricePlan",
    "Tier",
    "UsageVector",
    "component_covering",
    "prices_per_million",
]

OUTPUT = "output"  # visible output only
REASONING = "reasoning"  # hidden reasoning / thinking tokens

PER_UNIT = "per_unit"
GRADUATED = "graduated"
VOLUME = "volume"
PACKAGE = "package"
CHARGE_MODELS: tuple[str, ...] = (PER_UNIT, GRADUATED, VOLUME, PACKAGE)

ZERO = Decimal(0)


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound in pricing units; None = open last tier
    unit_price: Decimal  # price per pricing unit inside this tier
    flat_fee: Decimal = ZERO  # charged once when the tier is reached


@dataclass(frozen=True)
class ComponentPrice:
    key: str  # stable id, e.g. "reasoning:all" or a DB id as str
    token_class: str  # one of TOKEN_CLASSES
    charge_model: str  # one of CHARGE_MODELS
    aliases: frozenset[str] | None = None  # None = every alias no scoped component covers
    unit_tokens: int = 1_000_000  # tokens per pricing unit (prices are per 1M tokens)
    unit_price: Decimal = ZERO  # per_unit: price per unit; package: price per package
    package_units: Decimal = Decimal(1)  # package: pricing units per package
    tiers: tuple[Tier, ...] = ()  # graduated / volume
    included_tokens: int = 0  # free tokens per rated period, taken off first
    rounding: str = ROUND_HALF_UP  # rounding mode for this component's line
    description: str = ""


@dataclass(frozen=True)
class PricePlan:
    currency: str  # ISO 4217 code
    components: tuple[ComponentPrice, ...]
    base_fee: Decimal = ZERO  # per period, major units
    minimum_commitment: Decimal = ZERO  # per period, against usage lines only
    name: str = ""


@dataclass(frozen=True)
class UsageVector:
    """Tokens used in one period, keyed by ``(alias, token_class)``.

    The mapping is copied into a read-only view; counts must be non-negative ints.
    ``a + b`` adds two vectors key by key.
    """

    tokens: Mapping[tuple[str, str], int]  # (alias, token_class) -> tokens in the period

    def __post_init__(self) -> None:
        copied: dict[tuple[str, str], int] = {}
        for key, count in self.tokens.items():
            if not (
                isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)
            ):
                raise ValueError(f"usage key must be (alias, token_class), got {key!r}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"token count for {key!r} must be a non-negative int, got {count!r}"
                )
            copied[key] = count
        object.__setattr__(self, "tokens", MappingProxyType(copied))

    def __add__(self, other: UsageVector) -> UsageVector:
        if not isinstance(other, UsageVector):
            return NotImplemented
        summed = dict(self.tokens)
        for key, count in other.tokens.items():
            summed[key] = summed.get(key, 0) + count
        return UsageVector(summed)


def component_covering(
    components: Sequence[ComponentPrice], alias: str, token_class: str
) -> tuple[int | None, bool]:
    """``(index, folded)`` of the component that prices ``alias``'s ``token_class``.

    The component of that class whose ``aliases`` contains the alias wins over the one
    with ``aliases=None``. Reasoning with no covering "reasoning" component folds into the
    "output" component covering the alias (``folded`` is then True). ``(None, False)``
    when nothing covers it. ``validate_plan`` guarantees at most one candidate of each kind.
    """
    index = _covering(components, alias, token_class)
    if index is None and token_class == REASONING:
        index = _covering(components, alias, OUTPUT)
        return index, index is not None
    return index, False


def _covering(components: Sequence[ComponentPrice], alias: str, token_class: str) -> int | None:
    general: int | None = None
    for index, component in enumerate(components):
        if component.token_class != token_class:
            continue
        if component.aliases is None:
            general = index
        elif alias in component.aliases:
            return index
    return general


def prices_per_million(component: ComponentPrice) -> tuple[Decimal, Decimal]:
    """(lowest, highest) price per 1M tokens the component can charge at the margin:
    its cheapest and dearest tier; per-unit and package have one price."""
    per_unit = Decimal(1_000_000) / Decimal(component.unit_tokens)
    if component.charge_model in (GRADUATED, VOLUME):
        prices = [t.unit_price for t in component.tiers] or [Decimal(0)]
    elif component.charge_model == PACKAGE:
        prices = [component.unit_price / component.package_units]
    else:
        prices = [component.unit_price]
    return min(prices) * per_unit, max(prices) * per_unit
