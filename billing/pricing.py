"""The pure pricing engine: plan + usage vector in, rated invoice out.

No ORM, no I/O, no floats, stdlib only. Plans and usage are frozen dataclasses; amounts
are ``Decimal`` (exact) beside ``int`` minor units (rounded once).

Invariants (see /work/shared/reference/tier-semantics.md, which is binding):

Quantities
- A component's quantity is ``billable_tokens / unit_tokens`` in pricing units, a
  continuous ``Decimal`` (1_000_500 tokens at ``unit_tokens=1000`` is 1000.5 units).
  Arithmetic runs in a private 80-digit decimal context, so it is exact whenever
  ``unit_tokens`` divides a power of ten (1, 1000, 1_000_000, ...) and correct to 80
  significant digits otherwise; the caller's decimal context never changes a result.
- Tier ``i`` covers ``(up_to[i-1], up_to[i]]`` (tier 0 covers ``[0, up_to[0]]``); usage
  exactly at a bound stays in the lower tier. The last tier is open (``up_to=None``).

Charge models (each a small function returning ``(amount_exact, tier_charges)``; every
``TierCharge`` satisfies ``amount == quantity * unit_price + flat_fee`` and the charges
sum to the amount)
- per_unit: ``quantity * unit_price``; one TierCharge.
- graduated: each reached tier bills the part of the quantity inside it at its unit
  price plus its flat fee. Tier 0 is always reached (its flat fee is charged even at zero
  usage, as Lago and OpenMeter do); tier ``i > 0`` is reached when quantity > up_to[i-1].
  One TierCharge per reached tier.
- volume: the whole quantity at the unit price of the tier it falls in, plus that tier's
  flat fee; quantity 0 falls in tier 0. One TierCharge. See ``volume_cliffs``.
- package: ``ceil(quantity / package_units)`` packages times the package price (partial
  packages round up, 0 quantity costs 0). One TierCharge whose ``quantity`` is the number
  of packages and whose ``unit_price`` is the package price.

Allowance
- ``included_tokens`` are free per rated period: ``allowance_tokens = min(tokens,
  included_tokens)`` come off the component's total first, and the charge model prices
  the remainder. Tiers apply to the billable quantity, so graduated and volume tiers
  start again at 0 after the allowance.

Routing usage to components
- A ``(alias, token_class)`` entry goes to the component of that token class whose
  ``aliases`` contains the alias (the most specific one), else to the component of that
  class with ``aliases=None``. ``validate_plan`` guarantees at most one of each.
- Reasoning without a covering "reasoning" component folds into the "output" component
  covering that alias (providers bill reasoning as output): the output line's ``tokens``
  include it and its ``reasoning_tokens`` report the part. The allowance and tiers of
  that component count the folded reasoning like any other token.
- Usage no component covers is reported in ``RatedInvoice.unpriced``, never dropped.
  Entries with zero tokens are ignored everywhere (they route nowhere and name no alias).
- A component adds up all aliases routed to it into ONE quantity before pricing.

Lines, rounding and totals
- Line order: the base fee line (only when ``base_fee > 0``), then one usage line per
  component in plan order (also at zero usage), then the minimum true-up line (only when
  it is positive).
- Each line rounds exactly once: ``amount_minor = to_minor(amount_exact, currency,
  rounding)`` (the component's rounding mode; ROUND_HALF_UP for the base fee and the
  minimum). Tier subtotals are never rounded.
- ``true_up_minor = max(0, to_minor(minimum_commitment) - sum(usage lines' amount_minor))``;
  the base fee does not count toward the minimum.
- ``subtotal_minor = total_minor = sum(line.amount_minor)`` (no taxes here).
- ``rate`` refuses a plan with ``validate_plan`` errors (``InvalidPlanError``).
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import TypeGuard

from billing.currency import (
    ROUNDING_MODES,
    currency_exponent,
    from_minor,
    is_known_currency,
    to_minor,
)

__all__ = [
    "CHARGE_MODELS",
    "TOKEN_CLASSES",
    "InvalidPlanError",
    "PlanIssue",
    "PlanVersion",
    "PriceComponent",
    "RatedInvoice",
    "RatedLine",
    "Tier",
    "TierCharge",
    "UsageVector",
    "VolumeCliff",
    "charge_graduated",
    "charge_package",
    "charge_per_unit",
    "charge_volume",
    "rate",
    "validate_plan",
    "volume_cliffs",
]

INPUT = "input"  # uncached input
CACHE_READ = "cache_read"
CACHE_WRITE = "cache_write"
OUTPUT = "output"  # visible output only
REASONING = "reasoning"  # hidden reasoning / thinking tokens
TOKEN_CLASSES: tuple[str, ...] = (INPUT, CACHE_READ, CACHE_WRITE, OUTPUT, REASONING)

PER_UNIT = "per_unit"
GRADUATED = "graduated"
VOLUME = "volume"
PACKAGE = "package"
CHARGE_MODELS: tuple[str, ...] = (PER_UNIT, GRADUATED, VOLUME, PACKAGE)

ERROR = "error"
WARNING = "warning"

ZERO = Decimal(0)

# Private arithmetic context: wide enough to stay exact for any realistic token count and
# price, independent of whatever context the caller has installed.
_EXACT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


# --- Plan and usage ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound in pricing units; None = open last tier
    unit_price: Decimal  # price per pricing unit inside this tier
    flat_fee: Decimal = ZERO  # charged once when the tier is reached


@dataclass(frozen=True)
class PriceComponent:
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
class PlanVersion:
    currency: str  # ISO 4217 code
    components: tuple[PriceComponent, ...]
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


# --- Results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TierCharge:
    tier_index: int  # index into the component's tiers (0 for per_unit and package)
    quantity: Decimal  # units billed in this tier (packages for the package model)
    unit_price: Decimal  # price per unit (per package for the package model)
    flat_fee: Decimal  # flat fee charged for reaching this tier
    amount: Decimal  # quantity * unit_price + flat_fee, exact, never rounded


@dataclass(frozen=True)
class RatedLine:
    kind: str  # "base_fee" | "usage" | "minimum_true_up"
    component_key: str | None  # the PriceComponent.key for usage lines
    description: str
    token_class: str | None  # the component's token class for usage lines
    tokens: int  # all tokens routed to this component, folded reasoning included
    reasoning_tokens: int  # of which reasoning folded into an output component
    allowance_tokens: int  # tokens covered by included_tokens
    billable_tokens: int  # tokens - allowance_tokens
    quantity: Decimal  # billable_tokens / unit_tokens, exact (1 for fee lines)
    tiers: tuple[TierCharge, ...]
    amount_exact: Decimal  # exact, unrounded, major units
    amount_minor: int  # amount_exact rounded once, in minor units
    aliases: tuple[str, ...]  # aliases whose usage landed on this line (sorted)


@dataclass(frozen=True)
class RatedInvoice:
    currency: str
    lines: tuple[RatedLine, ...]
    subtotal_minor: int  # sum of lines' amount_minor
    total_minor: int  # = subtotal_minor (taxes are out of scope here)
    unpriced: tuple[tuple[str, str, int], ...]  # (alias, token_class, tokens) no component covers


@dataclass(frozen=True)
class PlanIssue:
    severity: str  # "error" | "warning"
    code: str  # stable machine-readable code, e.g. "overlapping_scope"
    message: str
    component_key: str | None = None  # None for plan-level issues


@dataclass(frozen=True)
class VolumeCliff:
    component_key: str
    boundary: Decimal  # the up_to where the total drops when crossed
    total_at_boundary: Decimal  # total at exactly the boundary (lower tier)
    total_just_above: Decimal  # limit of the total just above it (next tier)
    drop: Decimal  # total_at_boundary - total_just_above, > 0


class InvalidPlanError(ValueError):
    """``rate`` was given a plan that ``validate_plan`` reports errors for."""

    def __init__(self, issues: Sequence[PlanIssue]) -> None:
        self.issues = tuple(issues)
        summary = "; ".join(f"{i.code}: {i.message}" for i in self.issues)
        super().__init__(f"invalid plan: {summary}")


# --- Charge models ----------------------------------------------------------------------


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


def _tier_problems(tiers: Sequence[Tier]) -> Iterator[tuple[str, str]]:
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
        if not _is_number(tier.up_to):
            yield "invalid_number", f"tier {index} up_to must be a finite Decimal"
            continue
        bound = Decimal(tier.up_to)
        if bound < 0:
            yield "invalid_tier_bound", f"tier {index} up_to must not be negative"
        if previous is not None and bound <= previous:
            yield (
                "tiers_not_increasing",
                f"tier {index} up_to {_plain(bound)} is not above the previous bound {_plain(previous)}",
            )
        previous = bound
        if last:
            yield "last_tier_not_open", "last tier must be open-ended"


def _check_tiers(tiers: Sequence[Tier]) -> None:
    for index, tier in enumerate(tiers):
        _check_number(tier.unit_price, f"tier {index} unit_price")
        _check_number(tier.flat_fee, f"tier {index} flat_fee")
    for code, message in _tier_problems(tiers):
        raise ValueError(f"{code}: {message}")


def charge_per_unit(
    quantity: Decimal, unit_price: Decimal
) -> tuple[Decimal, tuple[TierCharge, ...]]:
    """``quantity * unit_price``, exact."""
    quantity = _check_quantity(quantity)
    unit_price = _check_number(unit_price, "unit_price")
    amount = _EXACT.multiply(quantity, unit_price)
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
        in_tier = max(ZERO, _EXACT.subtract(upper, lower))
        amount = _EXACT.add(_EXACT.multiply(in_tier, tier.unit_price), tier.flat_fee)
        charges.append(TierCharge(index, in_tier, tier.unit_price, tier.flat_fee, amount))
        if tier.up_to is None or quantity <= tier.up_to:
            break
        lower = tier.up_to
    return _sum(charge.amount for charge in charges), tuple(charges)


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
    amount = _EXACT.add(_EXACT.multiply(quantity, tier.unit_price), tier.flat_fee)
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
    packages = _EXACT.divide(quantity, package_units).to_integral_value(
        rounding=ROUND_CEILING, context=_EXACT
    )
    amount = _EXACT.multiply(packages, package_price)
    return amount, (TierCharge(0, packages, package_price, ZERO, amount),)


def _charge(component: PriceComponent, quantity: Decimal) -> tuple[Decimal, tuple[TierCharge, ...]]:
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


# --- Volume cliffs ----------------------------------------------------------------------


def volume_cliffs(component: PriceComponent) -> list[VolumeCliff]:
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
        at = _EXACT.add(_EXACT.multiply(boundary, tiers[index].unit_price), tiers[index].flat_fee)
        above = _EXACT.add(_EXACT.multiply(boundary, nxt.unit_price), nxt.flat_fee)
        if above < at:
            cliffs.append(
                VolumeCliff(component.key, boundary, at, above, _EXACT.subtract(at, above))
            )
    return cliffs


# --- Validation -------------------------------------------------------------------------


def validate_plan(plan: PlanVersion) -> list[PlanIssue]:
    """Every error and warning for ``plan``; ``rate`` refuses plans with errors.

    Error codes: unknown_currency, invalid_number, negative_price, negative_fee,
    negative_allowance, duplicate_component_key, unknown_token_class,
    unknown_charge_model, unknown_rounding, invalid_unit_tokens, invalid_package_units,
    missing_tiers, open_tier_not_last, last_tier_not_open, tiers_not_increasing,
    invalid_tier_bound, overlapping_scope.
    Warning codes: volume_cliff, empty_alias_scope, unused_field.
    """
    issues: list[PlanIssue] = []

    def error(code: str, message: str, key: str | None = None) -> None:
        issues.append(PlanIssue(ERROR, code, message, key))

    def warning(code: str, message: str, key: str | None = None) -> None:
        issues.append(PlanIssue(WARNING, code, message, key))

    def money(value: object, what: str, code: str, key: str | None) -> None:
        if not _is_number(value):
            error("invalid_number", f"{what} must be a finite Decimal, got {value!r}", key)
        elif value < 0:
            error(code, f"{what} must not be negative, got {_plain(Decimal(value))}", key)

    exponent = 2
    if is_known_currency(plan.currency):
        exponent = currency_exponent(plan.currency)
    else:
        error("unknown_currency", f"unknown currency {plan.currency!r}")
    money(plan.base_fee, "base_fee", "negative_fee", None)
    money(plan.minimum_commitment, "minimum_commitment", "negative_fee", None)

    seen_keys: set[str] = set()
    for component in plan.components:
        key = component.key
        if key in seen_keys:
            error("duplicate_component_key", f"component key {key!r} is used twice", key)
        seen_keys.add(key)
        if component.token_class not in TOKEN_CLASSES:
            error(
                "unknown_token_class",
                f"unknown token class {component.token_class!r} (expected one of {', '.join(TOKEN_CLASSES)})",
                key,
            )
        if component.rounding not in ROUNDING_MODES:
            error("unknown_rounding", f"unknown rounding mode {component.rounding!r}", key)
        if isinstance(component.unit_tokens, bool) or not isinstance(component.unit_tokens, int):
            error("invalid_unit_tokens", "unit_tokens must be an int", key)
        elif component.unit_tokens <= 0:
            error(
                "invalid_unit_tokens",
                f"unit_tokens must be positive, got {component.unit_tokens}",
                key,
            )
        if (
            isinstance(component.included_tokens, bool)
            or not isinstance(component.included_tokens, int)
            or component.included_tokens < 0
        ):
            error(
                "negative_allowance",
                f"included_tokens must be a non-negative int, got {component.included_tokens!r}",
                key,
            )
        if component.aliases is not None and not component.aliases:
            warning(
                "empty_alias_scope", "aliases is an empty set: the component covers nothing", key
            )

        model = component.charge_model
        if model not in CHARGE_MODELS:
            error(
                "unknown_charge_model",
                f"unknown charge model {model!r} (expected one of {', '.join(CHARGE_MODELS)})",
                key,
            )
            continue
        if model in (PER_UNIT, PACKAGE):
            money(component.unit_price, "unit_price", "negative_price", key)
            if component.tiers:
                warning("unused_field", f"tiers are ignored by the {model} charge model", key)
        if model == PACKAGE:
            if not _is_number(component.package_units):
                error("invalid_package_units", "package_units must be a finite Decimal", key)
            elif component.package_units <= 0:
                error(
                    "invalid_package_units",
                    f"package_units must be positive, got {_plain(component.package_units)}",
                    key,
                )
        if model in (GRADUATED, VOLUME):
            if _is_number(component.unit_price) and component.unit_price != 0:
                warning("unused_field", f"unit_price is ignored by the {model} charge model", key)
            tiers_ok = True
            for index, tier in enumerate(component.tiers):
                money(tier.unit_price, f"tier {index} unit_price", "negative_price", key)
                money(tier.flat_fee, f"tier {index} flat_fee", "negative_fee", key)
                tiers_ok = tiers_ok and _is_number(tier.unit_price) and _is_number(tier.flat_fee)
            for code, message in _tier_problems(component.tiers):
                error(code, message, key)
                tiers_ok = False
            if model == VOLUME and tiers_ok:
                for cliff in volume_cliffs(component):
                    warning(
                        "volume_cliff",
                        f"crossing {_plain(cliff.boundary)} units lowers the total from "
                        f"{_money(cliff.total_at_boundary, exponent)} to "
                        f"{_money(cliff.total_just_above, exponent)} "
                        f"(by {_money(cliff.drop, exponent)})",
                        key,
                    )

    issues.extend(_scope_overlaps(plan.components))
    return issues


def _scope_overlaps(components: Sequence[PriceComponent]) -> Iterator[PlanIssue]:
    general: dict[str, str] = {}  # token_class -> key of its aliases=None component
    scoped: dict[tuple[str, str], str] = {}  # (token_class, alias) -> key
    for component in components:
        token_class, key = component.token_class, component.key
        if component.aliases is None:
            if token_class in general:
                yield PlanIssue(
                    ERROR,
                    "overlapping_scope",
                    f"components {general[token_class]!r} and {key!r} both price every "
                    f"alias's {token_class} tokens",
                    key,
                )
            else:
                general[token_class] = key
            continue
        for alias in sorted(component.aliases):
            other = scoped.get((token_class, alias))
            if other is not None:
                yield PlanIssue(
                    ERROR,
                    "overlapping_scope",
                    f"components {other!r} and {key!r} both price {token_class} tokens of {alias!r}",
                    key,
                )
            else:
                scoped[(token_class, alias)] = key


# --- Rating -----------------------------------------------------------------------------


@dataclass
class _Routed:
    tokens: int = 0
    reasoning_tokens: int = 0
    aliases: set[str] = field(default_factory=set)


def _covering(components: Sequence[PriceComponent], alias: str, token_class: str) -> int | None:
    """Index of the component pricing ``alias``'s ``token_class``: scoped beats general."""
    general: int | None = None
    for index, component in enumerate(components):
        if component.token_class != token_class:
            continue
        if component.aliases is None:
            general = index
        elif alias in component.aliases:
            return index
    return general


def rate(plan: PlanVersion, usage: UsageVector) -> RatedInvoice:
    """Rate one period of ``usage`` against ``plan`` (see the module docstring)."""
    errors = [issue for issue in validate_plan(plan) if issue.severity == ERROR]
    if errors:
        raise InvalidPlanError(errors)
    currency = plan.currency
    components = plan.components

    routed = [_Routed() for _ in components]
    unpriced: list[tuple[str, str, int]] = []
    for (alias, token_class), count in usage.tokens.items():
        if count == 0:
            continue
        index = _covering(components, alias, token_class)
        folded = False
        if index is None and token_class == REASONING:
            index = _covering(components, alias, OUTPUT)
            folded = index is not None
        if index is None:
            unpriced.append((alias, token_class, count))
            continue
        target = routed[index]
        target.tokens += count
        target.aliases.add(alias)
        if folded:
            target.reasoning_tokens += count

    usage_lines = [
        _usage_line(component, routing, currency)
        for component, routing in zip(components, routed, strict=True)
    ]

    lines: list[RatedLine] = []
    if plan.base_fee > 0:
        description = f"Base fee ({plan.name})" if plan.name else "Base fee"
        lines.append(
            _fee_line(
                "base_fee", description, Decimal(plan.base_fee), to_minor(plan.base_fee, currency)
            )
        )
    lines.extend(usage_lines)
    if plan.minimum_commitment > 0:
        minimum_minor = to_minor(plan.minimum_commitment, currency)
        true_up_minor = max(0, minimum_minor - sum(line.amount_minor for line in usage_lines))
        if true_up_minor > 0:
            minimum = _money(Decimal(plan.minimum_commitment), currency_exponent(currency))
            description = f"Minimum commitment true-up (minimum {minimum})"
            lines.append(
                _fee_line(
                    "minimum_true_up",
                    description,
                    from_minor(true_up_minor, currency),
                    true_up_minor,
                )
            )

    subtotal = sum(line.amount_minor for line in lines)
    return RatedInvoice(
        currency=currency,
        lines=tuple(lines),
        subtotal_minor=subtotal,
        total_minor=subtotal,
        unpriced=tuple(sorted(unpriced)),
    )


def _usage_line(component: PriceComponent, routing: _Routed, currency: str) -> RatedLine:
    allowance = min(routing.tokens, component.included_tokens)
    billable = routing.tokens - allowance
    quantity = _EXACT.divide(Decimal(billable), Decimal(component.unit_tokens))
    amount, tier_charges = _charge(component, quantity)
    return RatedLine(
        kind="usage",
        component_key=component.key,
        description=component.description or _default_description(component),
        token_class=component.token_class,
        tokens=routing.tokens,
        reasoning_tokens=routing.reasoning_tokens,
        allowance_tokens=allowance,
        billable_tokens=billable,
        quantity=quantity,
        tiers=tier_charges,
        amount_exact=amount,
        amount_minor=to_minor(amount, currency, component.rounding),
        aliases=tuple(sorted(routing.aliases)),
    )


def _fee_line(kind: str, description: str, amount: Decimal, amount_minor: int) -> RatedLine:
    return RatedLine(
        kind=kind,
        component_key=None,
        description=description,
        token_class=None,
        tokens=0,
        reasoning_tokens=0,
        allowance_tokens=0,
        billable_tokens=0,
        quantity=Decimal(1),
        tiers=(),
        amount_exact=amount,
        amount_minor=amount_minor,
        aliases=(),
    )


def _default_description(component: PriceComponent) -> str:
    scope = "all models" if component.aliases is None else ", ".join(sorted(component.aliases))
    return f"{component.token_class} tokens ({scope})"


# --- Small helpers ----------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[Decimal | int]:
    """A finite Decimal or int (floats are never money)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, Decimal | int)
        and Decimal(value).is_finite()
    )


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total = _EXACT.add(total, value)
    return total


def _plain(value: Decimal) -> str:
    """A Decimal without exponent notation or trailing zeros: 1E+4 → "10000"."""
    return format(Decimal(value).normalize(_EXACT), "f")


def _money(value: Decimal, exponent: int) -> str:
    """At least the currency's digits, more only when the exact value needs them."""
    step = Decimal(1).scaleb(-exponent)
    rounded = value.quantize(step, context=_EXACT)
    return format(rounded if rounded == value else value.normalize(_EXACT), "f")


def prices_per_million(component: PriceComponent) -> tuple[Decimal, Decimal]:
    """(lowest, highest) price per 1M tokens the component can charge at the margin:
    its cheapest and dearest tier; per-unit and package have one price."""
    per_unit = Decimal(1_000_000) / Decimal(component.unit_tokens)
    if component.charge_model in ("graduated", "volume"):
        prices = [t.unit_price for t in component.tiers] or [Decimal(0)]
    elif component.charge_model == "package":
        prices = [component.unit_price / component.package_units]
    else:
        prices = [component.unit_price]
    return min(prices) * per_unit, max(prices) * per_unit
