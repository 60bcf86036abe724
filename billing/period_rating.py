"""Rating a tenant's billing period: one rated segment per plan version in force, priced
by the pure engine (billing/pricing/). Usage is read only through metering.selectors
(hourly rollups, or raw records when recomputing); nothing here writes."""

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from billing.models import Subscription
from billing.pricing.currency import to_minor
from billing.pricing.periods import Period, period_containing, segments
from billing.pricing.priced_plan import UsageVector
from billing.pricing.proration import prorate_plan
from billing.pricing.rate import RatedInvoice, RatedLine, rate
from billing.selectors import plan_version_pricing, subscription_current, subscriptions_in_period
from config.errors import NotFound
from metering.selectors import NO_USAGE, UsageTotals, usage_totals, usage_totals_by_tenant


@dataclass(frozen=True)
class SegmentRating:
    start: datetime
    end: datetime
    subscription_id: int
    plan_version_id: int
    share: Decimal  # the segment's exact fraction of the period
    rated: RatedInvoice


@dataclass(frozen=True)
class PeriodRating:
    tenant_id: uuid.UUID
    period: Period
    currency: str
    segments: tuple[SegmentRating, ...]
    total_minor: int
    cutoff_record_id: int  # highest usage record included

    @property
    def lines(self) -> list[RatedLine]:
        return [line for s in self.segments for line in s.rated.lines]


UsageSource = Callable[[uuid.UUID, datetime, datetime], UsageTotals]


def usage_from_rollups(tenant_id: uuid.UUID, start: datetime, end: datetime) -> UsageTotals:
    return usage_totals(tenant_id=tenant_id, start=start, end=end)


def period_rate(
    *,
    tenant_id: uuid.UUID,
    period: Period,
    usage_source: UsageSource = usage_from_rollups,
    subscriptions: list[Subscription] | None = None,
) -> PeriodRating:
    """Rate a tenant's period: one rated segment per plan version in force. Usage comes
    from hourly rollups unless another source is given (recomputation uses raw records).
    `subscriptions` may be passed when the caller has already read them."""
    subs = (
        subscriptions
        if subscriptions is not None
        else subscriptions_in_period(tenant_id=tenant_id, period=period)
    )
    if not subs:
        raise NotFound("The tenant has no subscription in that period.")
    rated: list[SegmentRating] = []
    cutoff = 0
    for segment in segments(period, [(s.starts_at, s.ends_at, s) for s in subs]):
        subscription = segment.item
        share = segment.share_of(period)
        plan = prorate_plan(plan_version_pricing(subscription.plan_version), share)
        usage = usage_source(tenant_id, segment.start, segment.end)
        cutoff = max(cutoff, usage.cutoff_record_id)
        rated.append(
            SegmentRating(
                start=segment.start,
                end=segment.end,
                subscription_id=subscription.pk,
                plan_version_id=subscription.plan_version_id,
                share=share,
                rated=rate(plan, UsageVector(usage.tokens)),
            )
        )
    rated = _base_fee_remainder_to_last(rated)
    return PeriodRating(
        tenant_id=tenant_id,
        period=period,
        currency=rated[0].rated.currency,
        segments=tuple(rated),
        total_minor=sum(s.rated.total_minor for s in rated),
        cutoff_record_id=cutoff,
    )


def _base_fee_remainder_to_last(rated: list[SegmentRating]) -> list[SegmentRating]:
    """A base fee prorated over segments is rounded as a whole: the segments' rounded fees
    add up to the rounded sum of their exact fees, the last segment taking the remainder."""
    fees = [
        (i, j)
        for i, s in enumerate(rated)
        for j, line in enumerate(s.rated.lines)
        if line.kind == "base_fee"
    ]
    if len(fees) < 2:
        return rated
    currency = rated[0].rated.currency
    exact = sum((rated[i].rated.lines[j].amount_exact for i, j in fees), Decimal(0))
    diff = to_minor(exact, currency) - sum(rated[i].rated.lines[j].amount_minor for i, j in fees)
    if diff == 0:
        return rated
    i, j = fees[-1]
    invoice = rated[i].rated
    lines = list(invoice.lines)
    lines[j] = dataclasses.replace(lines[j], amount_minor=lines[j].amount_minor + diff)
    fixed = dataclasses.replace(
        invoice,
        lines=tuple(lines),
        subtotal_minor=invoice.subtotal_minor + diff,
        total_minor=invoice.total_minor + diff,
    )
    return [*rated[:i], dataclasses.replace(rated[i], rated=fixed), *rated[i + 1 :]]


def invoice_preview(*, tenant_id: uuid.UUID, as_of: datetime | None = None) -> PeriodRating:
    """The current period's rated lines and totals, live from the rollups."""
    as_of = as_of or timezone.now()
    subscription = subscription_current(tenant_id=tenant_id, at=as_of)
    if subscription is None:
        raise NotFound("The tenant has no current subscription.")
    return period_rate(
        tenant_id=tenant_id, period=period_containing(subscription.anchor_day, as_of)
    )


def rate_all_tenants(*, period: Period) -> dict[uuid.UUID, int]:
    """Total (minor units) of every tenant's period, in bulk: one rollup query for all
    tenants with a single segment; tenants whose plan changed mid-period are rated one by
    one (period_rate). Returns tenant id -> total_minor."""
    subs = list(
        Subscription.objects.filter(starts_at__lt=period.end)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=period.start))
        .select_related("plan_version__plan")
    )
    by_tenant: dict[uuid.UUID, list[Subscription]] = {}
    for subscription in subs:
        by_tenant.setdefault(subscription.tenant_id, []).append(subscription)
    usage = usage_totals_by_tenant(start=period.start, end=period.end, with_cutoff=False)
    totals: dict[uuid.UUID, int] = {}
    for tenant_id, tenant_subs in by_tenant.items():
        spans = segments(period, [(s.starts_at, s.ends_at, s) for s in tenant_subs])
        if len(spans) == 1 and spans[0].start == period.start and spans[0].end == period.end:
            plan = plan_version_pricing(spans[0].item.plan_version)
            vector = UsageVector(usage.get(tenant_id, NO_USAGE).tokens)
            totals[tenant_id] = rate(plan, vector).total_minor
        else:
            totals[tenant_id] = period_rate(tenant_id=tenant_id, period=period).total_minor
    return totals
