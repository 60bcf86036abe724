"""Margins: margin policies per accelerator (versioned from an instant on) and the price
floors plan validation checks: a plan component priced below the cost of serving an
alias it covers, at the policy's minimum margin, gets a ``below_cost_floor`` warning."""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction
from django.utils import timezone

from billing.costs import formulas
from billing.costs.catalogue import rate_costs
from billing.models import AcceleratorType, MarginPolicy
from billing.pricing.plan import PricePlan, component_covering, prices_per_million
from billing.pricing.validate import PlanIssue
from metering.models import ServingCostRate
from metering.selectors import current_cost_rates
from metering.usage import TOKEN_CLASSES


@transaction.atomic
def margin_policy_set(
    *,
    accelerator: AcceleratorType,
    target_margin: Decimal,
    minimum_margin: Decimal,
    effective_from: datetime,
) -> MarginPolicy:
    formulas.Margins(target_margin=target_margin, minimum_margin=minimum_margin)  # validates
    return MarginPolicy.objects.create(
        accelerator=accelerator,
        target_margin=target_margin,
        minimum_margin=minimum_margin,
        effective_from=effective_from,
    )


def margin_policy_in_force(*, accelerator_key: str, at: datetime) -> formulas.Margins | None:
    policy = (
        MarginPolicy.objects.filter(accelerator__key=accelerator_key, effective_from__lte=at)
        .order_by("-effective_from", "-id")
        .first()
    )
    if policy is None:
        return None
    return formulas.Margins(Decimal(policy.target_margin), Decimal(policy.minimum_margin))


def floor_breaches(plan: PricePlan, *, at: datetime | None = None) -> list[PlanIssue]:
    """A warning for every component priced below the cost floor of an alias it covers."""
    at = at or timezone.now()
    if plan.currency.upper() != "USD":
        return []  # costs are in USD and no exchange rates are kept: floors cover USD plans
    all_aliases = list(ServingCostRate.objects.values_list("alias", flat=True).distinct())
    rates = current_cost_rates(all_aliases, at=at)
    issues = []
    for index, component in enumerate(plan.components):
        price, _ = prices_per_million(component)
        for alias in sorted(rates):
            rate = rates[alias]
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
                floor = formulas.floor_price(rate_costs(rate).as_dict()[token_class], margin)
                if price < floor:
                    issues.append(
                        PlanIssue(
                            severity="warning",
                            code="below_cost_floor",
                            message=(
                                f"{token_class} on {alias} ({rate.accelerator}) is priced at "
                                f"{_usd(price)}/M, below its floor {_usd(floor)}/M at a "
                                f"{margin:.0%} minimum margin (by {_usd(floor - price)}/M)"
                            ),
                            component_key=component.key,
                        )
                    )
    return issues


def _usd(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"
