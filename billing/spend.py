"""List prices for spend control: what one million tokens of each class costs a tenant on
an alias under its current plan, at the component's HIGHEST marginal price (allowances
not deducted). Spend counted this way is never below what the invoice will charge, so a
spend limit holds for the invoice too. Registered with metering at start-up
(BillingConfig.ready) so the proxy can read it without importing billing."""

import uuid
from decimal import Decimal

from django.utils import timezone

from billing import pricing
from billing.selectors import plan_version_pricing, subscription_current
from metering.costs import Rates

CLASSES = ("input", "cache_read", "cache_write", "output", "reasoning")


def _covering(
    plan: pricing.PlanVersion, alias: str, token_class: str
) -> pricing.PriceComponent | None:
    same = [c for c in plan.components if c.token_class == token_class]
    return next((c for c in same if c.aliases and alias in c.aliases), None) or next(
        (c for c in same if c.aliases is None), None
    )


def spend_rates_for_tenant(tenant_id: uuid.UUID, aliases: list[str]) -> dict[str, Rates]:
    subscription = subscription_current(tenant_id=tenant_id, at=timezone.now())
    if subscription is None:
        return {}
    plan = plan_version_pricing(subscription.plan_version)
    out = {}
    for alias in aliases:
        prices = {}
        for token_class in CLASSES:
            component = _covering(plan, alias, token_class)
            if component is None and token_class == "reasoning":
                component = _covering(plan, alias, "output")  # reasoning is billed as output
            prices[token_class] = (
                pricing.prices_per_million(component)[1] if component else Decimal(0)
            )
        out[alias] = Rates(**prices)
    return out
