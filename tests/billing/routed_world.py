"""One alias served by two targets, with usage and per-target statistics, for the
margin-by-target, what-if re-route and routing API tests.

"reasoner" has targets "h100" (priority 0, weight 80) and "mi" (priority 1, weight 20),
each with its own serving cost rate; the tenant pays $4/M output and $2/M reasoning plus
a $5 base fee. October 2026 usage (through the ledger's write path):
- h100: 1M output, 2M reasoning at $1/M and $1/M: cost 3
- mi:   3M output, 1M reasoning at $0.5/M and $0.25/M: cost 1.75
- before routing (route 0) at the h100 rate: 1M output: cost 1
Revenue: output line $20 split 1:3:1 by output, reasoning line $6 split 2:1 by reasoning.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.models import Alias, ApiKey, Route, ServingCostRate, Tenant
from tests.factories import ApiKeyFactory, RouteFactory
from tests.usage_helpers import write_usage

T0 = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class RoutedWorld:
    key: ApiKey
    alias: Alias
    h100: Route
    mi: Route
    h100_rate: ServingCostRate
    mi_rate: ServingCostRate


def rate_for(route: Route, *, output: str, reasoning: str, at: datetime = T0) -> ServingCostRate:
    return ServingCostRate.objects.create(
        alias=route.alias_id,
        route=route,
        accelerator=route.accelerator,
        effective_from=at,
        input_usd=Decimal("0.1"),
        cache_read_usd=Decimal("0.01"),
        cache_write_usd=Decimal("0.2"),
        output_usd=Decimal(output),
        reasoning_usd=Decimal(reasoning),
    )


def subscribe_payg(tenant: Tenant) -> None:
    """Subscribe `tenant` from T0 to a new PAYG plan: $5 base fee, $4/M output and $2/M
    reasoning (input free)."""
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="payg", name="PAYG"),
            currency="USD",
            effective_from=T0,
            base_fee=Decimal(5),
            components=[
                {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal(4)},
                {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal(2)},
            ],
        )
    )
    subscription_create(tenant=tenant, plan_version=version, starts_at=T0)


def routed_world(*, usage: bool = True) -> RoutedWorld:
    key = ApiKeyFactory()
    h100 = RouteFactory(alias="reasoner", name="h100", weight=80, priority=0)
    mi = RouteFactory(alias="reasoner", name="mi", weight=20, priority=1, accelerator="amd-mi300x")
    alias = Alias.objects.get(name="reasoner")
    h100_rate = rate_for(h100, output="1", reasoning="1")
    mi_rate = rate_for(mi, output="0.5", reasoning="0.25")
    subscribe_payg(key.tenant)
    if not usage:
        return RoutedWorld(key, alias, h100, mi, h100_rate, mi_rate)
    at = T0 + timedelta(days=3)
    write_usage(
        key, at, h100_rate, route_id=h100.pk, output_tokens=1_000_000, reasoning_tokens=2_000_000
    )
    write_usage(
        key, at, mi_rate, route_id=mi.pk, output_tokens=3_000_000, reasoning_tokens=1_000_000
    )
    write_usage(key, at, h100_rate, output_tokens=1_000_000)
    return RoutedWorld(key, alias, h100, mi, h100_rate, mi_rate)
