"""What billing tells the proxy about a tenant's calls (`tenant_terms`), registered with
metering at start-up (BillingConfig.ready) so the proxy can read it without importing
billing:

- list prices: what one million tokens of each class costs on an alias under the current
  plan, at the HIGHEST marginal price of the component covering it (the rating's own
  rule, `component_covering`: reasoning without a component of its own is priced as
  output; allowances not deducted). Spend counted this way is never below what the
  invoice will charge, so a limit holds for the invoice;
- the plan's reasoning governance and monthly reasoning-token budget;
- the prepaid balance that stops calls, and the tenant's alert thresholds."""

import uuid
from decimal import Decimal

from django.utils import timezone

from billing.alerts import DEFAULT_THRESHOLDS, thresholds_of
from billing.balances import balance_terms
from billing.models import PlanVersion, WebhookEndpoint
from billing.pricing.priced_plan import PricePlan, component_covering, prices_per_million
from billing.selectors import CurrentVersion, current_version, version_pricing
from config.compiled_sql import UUID_SLOT, CompiledQuery
from metering.control.governance import ReasoningRules
from metering.control.terms import TenantTerms
from metering.ledger.record import Rates
from metering.usage import TOKEN_CLASSES

_webhook_thresholds = CompiledQuery(
    lambda tenant_id: (
        WebhookEndpoint.objects.filter(tenant_id=tenant_id, is_active=True)
        .order_by("pk")
        .values_list("thresholds")[:1]
    ),
    UUID_SLOT,
)


def tenant_terms(tenant_id: uuid.UUID, aliases: list[str]) -> TenantTerms:
    version = current_version(tenant_id=tenant_id, at=timezone.now())
    endpoint = _webhook_thresholds.first(tenant_id)
    return TenantTerms(
        spend_rates=spend_rates(version_pricing(version), aliases) if version else {},
        reasoning=plan_rules(version) if version else None,
        monthly_reasoning_tokens=version.monthly_reasoning_tokens if version else None,
        reasoning_refuse=bool(version and version.reasoning_mode == "refuse"),
        balance=balance_terms(tenant_id),
        alert_thresholds=thresholds_of(endpoint[0]) if endpoint else DEFAULT_THRESHOLDS,
    )


def plan_rules(version: PlanVersion | CurrentVersion) -> ReasoningRules | None:
    rules = ReasoningRules(
        allowed_efforts=frozenset(version.allowed_efforts or ()),
        default_max_output_tokens=version.default_max_output_tokens,
        max_output_tokens=version.max_output_tokens,
        refuse=version.reasoning_mode == "refuse",
        scope="on your plan",
    )
    return None if rules.is_empty else rules


def spend_rates(plan: PricePlan, aliases: list[str]) -> dict[str, Rates]:
    out = {}
    for alias in aliases:
        prices = {}
        for token_class in TOKEN_CLASSES:
            index, _ = component_covering(plan.components, alias, token_class)
            prices[token_class] = (
                prices_per_million(plan.components[index])[1] if index is not None else Decimal(0)
            )
        out[alias] = Rates(**prices)
    return out
