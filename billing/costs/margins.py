"""Margins: the margin arithmetic, margin policies per accelerator (versioned from an
instant on) and the price floors plan validation checks: a plan component priced below the
cost of serving an alias it covers, at the policy's minimum margin, gets a
``below_cost_floor`` warning.

Margin arithmetic (pure, exact like billing.costs.formulas: one division rounded to 50
significant digits): a gross margin ``m`` in [0, 1) turns a cost ``c`` into the floor
price ``c / (1 - m)``; ``gross_margin = (revenue - cost) / revenue``.
"""

import decimal
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction
from django.utils import timezone

from billing.costs import formulas
from billing.costs.catalogue import rate_costs
from billing.models import AcceleratorType, Deployment, MarginPolicy
from billing.pricing.priced_plan import PricePlan, component_covering, prices_per_million
from billing.pricing.validate import PlanIssue
from metering.models import ServingCostRate
from metering.selectors import active_targets, current_alias_cost_rates, current_cost_rates
from metering.usage import TOKEN_CLASSES

# --- Margin arithmetic (pure) -----------------------------------------------------------


def _margin(value: object, what: str) -> Decimal:
    number = formulas.checked_number(value, what)
    if not formulas.ZERO <= number < formulas.ONE:
        raise ValueError(f"{what} must be in [0, 1), got {number}")
    return number


@dataclass(frozen=True)
class Margins:
    """A margin policy's two margins, checked (the stored policy is billing.models.MarginPolicy)."""

    target_margin: Decimal  # gross margin list prices aim for, in [0, 1)
    minimum_margin: Decimal  # gross margin no price may go below, in [0, target]

    def __post_init__(self) -> None:
        target = _margin(self.target_margin, "target_margin")
        minimum = _margin(self.minimum_margin, "minimum_margin")
        if minimum > target:
            raise ValueError(f"minimum_margin {minimum} exceeds target_margin {target}")


def floor_price(cost: Decimal, margin: Decimal) -> Decimal:
    """The price earning gross margin ``margin`` on ``cost``: ``cost / (1 - margin)``,
    ``margin`` in [0, 1)."""
    amount = formulas.checked_non_negative(cost, "cost")
    fraction = _margin(margin, "margin")
    with decimal.localcontext(formulas.EXACT):
        kept = formulas.ONE - fraction
    return formulas.DIVIDE.divide(amount, kept)


def gross_margin(revenue: Decimal, cost: Decimal) -> Decimal | None:
    """``(revenue - cost) / revenue`` (negative when selling below cost); ``None`` when
    revenue is 0."""
    earned = formulas.checked_number(revenue, "revenue")
    spent = formulas.checked_number(cost, "cost")
    if earned == 0:
        return None
    with decimal.localcontext(formulas.EXACT):
        profit = earned - spent
    return formulas.DIVIDE.divide(profit, earned)


# --- Policies and floors ----------------------------------------------------------------


@transaction.atomic
def margin_policy_set(
    *,
    accelerator: AcceleratorType,
    target_margin: Decimal,
    minimum_margin: Decimal,
    effective_from: datetime,
) -> MarginPolicy:
    Margins(target_margin=target_margin, minimum_margin=minimum_margin)  # validates
    return MarginPolicy.objects.create(
        accelerator=accelerator,
        target_margin=target_margin,
        minimum_margin=minimum_margin,
        effective_from=effective_from,
    )


def margin_policy_in_force(*, accelerator_key: str, at: datetime) -> Margins | None:
    policy = (
        MarginPolicy.objects.filter(accelerator__key=accelerator_key, effective_from__lte=at)
        .order_by("-effective_from", "-id")
        .first()
    )
    if policy is None:
        return None
    return Margins(Decimal(policy.target_margin), Decimal(policy.minimum_margin))


def floor_breaches(plan: PricePlan, *, at: datetime | None = None) -> list[PlanIssue]:
    """A warning for every component priced below the cost floor of an alias it covers."""
    at = at or timezone.now()
    if plan.currency.upper() != "USD":
        return []  # costs are in USD and no exchange rates are kept: floors cover USD plans
    # every serving cost rate is published for a deployed alias (catalogue.cost_rate_publish);
    # each active target's own rate is checked, so a price must clear the dearest target
    deployed = list(Deployment.objects.values_list("alias", flat=True).distinct())
    targets = active_targets(deployed)
    by_target = current_cost_rates(
        list(targets), at=at, aliases={k: v[0] for k, v in targets.items()}
    )
    # (alias, target name or "" for an alias no active target serves yet, rate)
    checked: list[tuple[str, str, ServingCostRate]] = sorted(
        [(*targets[route_id], rate) for route_id, rate in by_target.items()]
        + [
            (alias, "", rate)
            for alias, rate in current_alias_cost_rates(
                set(deployed) - {alias for alias, _ in targets.values()}, at=at
            ).items()
        ],
        key=lambda item: (item[0], item[1]),
    )
    issues = []
    for index, component in enumerate(plan.components):
        price, _ = prices_per_million(component)
        for alias, target, rate in checked:
            label = alias if target in ("", "default") else f"{alias}/{target}"
            # the classes of this alias the component prices (reasoning may fold into output)
            classes = [
                token_class
                for token_class in TOKEN_CLASSES
                if component_covering(plan.components, alias, token_class)[0] == index
            ]
            if not classes:
                continue
            policy = margin_policy_in_force(accelerator_key=rate.accelerator, at=at)
            margin = policy.minimum_margin if policy else Decimal(0)
            for token_class in classes:
                floor = floor_price(getattr(rate_costs(rate), token_class), margin)
                if price < floor:
                    issues.append(
                        PlanIssue(
                            severity="warning",
                            code="below_cost_floor",
                            message=(
                                f"{token_class} on {label} ({rate.accelerator}) is priced at "
                                f"{_usd(price)}/M, below its floor {_usd(floor)}/M at a "
                                f"{margin:.0%} minimum margin (by {_usd(floor - price)}/M)"
                            ),
                            component_key=component.key,
                        )
                    )
    return issues


def _usd(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"
