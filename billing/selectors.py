"""Reads for billing: plan versions as pricing dataclasses, subscriptions by period."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.db.models import Prefetch, Q, QuerySet

from billing.models import PlanVersion, PriceComponent, PriceTier, Subscription
from billing.pricing.periods import Period
from billing.pricing.priced_plan import ComponentPrice, PricePlan, Tier
from config.compiled_sql import DATETIME_SLOT, UUID_SLOT, CompiledQuery

# Published versions never change, so their pricing is cached per process. Keyed by the
# row's incarnation, not its pk alone: SQLite reuses the highest rowid once that row is
# rolled back or deleted, so a bare pk could name a different version later; a reused pk
# comes with another created_at. (Filled at once, not on commit: a period close prices
# many tenants inside one transaction.)
_PricingKey = tuple[int, datetime, datetime | None]
_PUBLISHED_CACHE: dict[_PricingKey, PricePlan] = {}


def _pricing_key(version: "PlanVersion | CurrentVersion") -> _PricingKey | None:
    """Where a version's pricing is cached, None if it is not: only a published version,
    which never changes, is cached."""
    if version.status != PlanVersion.Status.PUBLISHED:
        return None
    return (version.pk, version.created_at, version.published_at)


def plan_version_queryset() -> QuerySet[PlanVersion]:
    return PlanVersion.objects.select_related("plan").prefetch_related(
        Prefetch(
            "components",
            queryset=PriceComponent.objects.order_by("position", "id").prefetch_related(
                Prefetch("tiers", queryset=PriceTier.objects.order_by("position"))
            ),
        )
    )


def plan_version_pricing(version: PlanVersion) -> PricePlan:
    """The pure pricing view of a stored plan version (cached for published versions,
    which never change)."""
    key = _pricing_key(version)
    if key is not None and key in _PUBLISHED_CACHE:
        return _PUBLISHED_CACHE[key]
    components = tuple(
        ComponentPrice(
            key=str(c.pk),
            token_class=c.token_class,
            charge_model=c.charge_model,
            aliases=frozenset(c.aliases) if c.aliases else None,
            unit_tokens=c.unit_tokens,
            unit_price=Decimal(c.unit_price),
            package_units=Decimal(c.package_units),
            tiers=tuple(
                Tier(
                    up_to=None if t.up_to is None else Decimal(t.up_to),
                    unit_price=Decimal(t.unit_price),
                    flat_fee=Decimal(t.flat_fee),
                )
                for t in c.tiers.all()
            ),
            included_tokens=c.included_tokens,
            rounding=c.rounding,
            description=c.description,
        )
        for c in version.components.all()
    )
    plan = PricePlan(
        currency=version.currency,
        components=components,
        base_fee=Decimal(version.base_fee),
        minimum_commitment=Decimal(version.minimum_commitment),
        name=f"{version.plan.name} v{version.version}",
    )
    if key is not None:
        _PUBLISHED_CACHE[key] = plan
    return plan


def subscriptions_in_period(*, tenant_id: uuid.UUID, period: Period) -> list[Subscription]:
    return list(
        Subscription.objects.filter(tenant_id=tenant_id, starts_at__lt=period.end)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=period.start))
        .select_related("plan_version")
        .order_by("starts_at")
    )


def _subscriptions_current(tenant_id: uuid.UUID, at: datetime) -> QuerySet[Subscription]:
    return Subscription.objects.filter(tenant_id=tenant_id, starts_at__lte=at).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=at)
    )


def subscription_current(*, tenant_id: uuid.UUID, at: datetime) -> Subscription | None:
    return _subscriptions_current(tenant_id, at).select_related("plan_version__plan").first()


class CurrentVersion(NamedTuple):
    """The plan version of a tenant's current subscription, as the proxy's terms read it."""

    pk: int
    created_at: datetime
    published_at: datetime | None
    status: str
    allowed_efforts: list[str] | None
    default_max_output_tokens: int | None
    max_output_tokens: int | None
    monthly_reasoning_tokens: int | None
    reasoning_mode: str


_current_version = CompiledQuery(
    lambda tenant_id, at: _subscriptions_current(tenant_id, at).values_list(
        *(f"plan_version__{name}" for name in CurrentVersion._fields)
    )[:1],
    UUID_SLOT,
    DATETIME_SLOT,
)


def current_version(*, tenant_id: uuid.UUID, at: datetime) -> CurrentVersion | None:
    """`subscription_current`'s plan version, without its pricing (one compiled query)."""
    row = _current_version.first(tenant_id, at)
    return None if row is None else CurrentVersion._make(row)


def version_pricing(version: CurrentVersion) -> PricePlan:
    """`plan_version_pricing` of this version: from the cache when published and priced
    before, else read."""
    key = _pricing_key(version)
    if key is not None and key in _PUBLISHED_CACHE:
        return _PUBLISHED_CACHE[key]
    return plan_version_pricing(plan_version_queryset().get(pk=version.pk))
