"""Rating: a plan's terms + one period's usage in, rated lines and totals out.

Part of the pure pricing engine (billing/pricing/): no ORM, no I/O, no floats, stdlib only. Plans and usage are frozen dataclasses; amounts
are ``Decimal`` (exact) beside ``int`` minor units (rounded once).

Invariants (binding; tests/billing/pricing/test_rate.py checks each one):

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
  class with ``aliases=None``. ``validate_plan`` guarantees at most one of each
  (``component_covering`` in billing/pricing/priced_plan.py is the one home of this rule).
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
- ``rate`` refuses a plan with ``validate_plan`` errors (``PlanInvalid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from billing.pricing.charges import EXACT, TierCharge, component_charge
from billing.pricing.currency import currency_exponent, from_minor, to_minor
from billing.pricing.priced_plan import ComponentPrice, PricePlan, UsageVector, component_covering
from billing.pricing.validate import ERROR, PlanInvalid, money_text, validate_plan

__all__ = ["RatedInvoice", "RatedLine", "rate"]


@dataclass(frozen=True)
class RatedLine:
    kind: str  # "base_fee" | "usage" | "minimum_true_up"
    component_key: str | None  # the ComponentPrice.key for usage lines
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


@dataclass
class _Routed:
    tokens: int = 0
    reasoning_tokens: int = 0
    aliases: set[str] = field(default_factory=set)


def rate(plan: PricePlan, usage: UsageVector) -> RatedInvoice:
    """Rate one period of ``usage`` against ``plan`` (see the module docstring)."""
    errors = [issue for issue in validate_plan(plan) if issue.severity == ERROR]
    if errors:
        raise PlanInvalid.of(errors)
    currency = plan.currency
    components = plan.components

    routed = [_Routed() for _ in components]
    unpriced: list[tuple[str, str, int]] = []
    for (alias, token_class), count in usage.tokens.items():
        if count == 0:
            continue
        index, folded = component_covering(components, alias, token_class)
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
            minimum = money_text(Decimal(plan.minimum_commitment), currency_exponent(currency))
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


def _usage_line(component: ComponentPrice, routing: _Routed, currency: str) -> RatedLine:
    allowance = min(routing.tokens, component.included_tokens)
    billable = routing.tokens - allowance
    quantity = EXACT.divide(Decimal(billable), Decimal(component.unit_tokens))
    amount, tier_charges = component_charge(component, quantity)
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


def _default_description(component: ComponentPrice) -> str:
    scope = "all models" if component.aliases is None else ", ".join(sorted(component.aliases))
    return f"{component.token_class} tokens ({scope})"
