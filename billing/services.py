"""Writes on plans and subscriptions, and the rating of a tenant's billing period.

Rating reads usage only through metering.selectors (hourly rollups) and prices it with the
pure engine in billing.pricing; nothing here scans raw usage records.
"""

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import pricing
from billing.currency import to_minor
from billing.models import Plan, PlanVersion, PriceComponent, PriceTier, Subscription
from billing.periods import Period, ceil_hour, period_containing, segments
from billing.proration import prorate_plan
from billing.selectors import plan_version_pricing, subscription_current, subscriptions_in_period
from config.errors import ApplicationError, Conflict, NotFound
from metering.control.governance import EFFORTS
from metering.models import Tenant
from metering.selectors import NO_USAGE, UsageTotals, usage_totals


class PlanInvalid(ApplicationError):
    code = "plan_invalid"


# --- plans ---------------------------------------------------------------------------


@transaction.atomic
def plan_create(*, code: str, name: str) -> Plan:
    if Plan.objects.filter(code=code).exists():
        raise Conflict(f"A plan with code {code!r} exists.")
    return Plan.objects.create(code=code, name=name)


def _issues_payload(issues: list[pricing.PlanIssue]) -> list[dict[str, Any]]:
    return [
        {"severity": i.severity, "code": i.code, "message": i.message, "component": i.component_key}
        for i in issues
    ]


@transaction.atomic
def plan_version_create(
    *,
    plan: Plan,
    currency: str,
    effective_from: datetime,
    components: list[dict[str, Any]],
    base_fee: Decimal = Decimal(0),
    minimum_commitment: Decimal = Decimal(0),
    governance: dict[str, Any] | None = None,
) -> PlanVersion:
    """A new draft version with its components and tiers, and optionally its reasoning
    governance (`allowed_efforts`, `default_max_output_tokens`, `max_output_tokens`,
    `monthly_reasoning_tokens`, `reasoning_mode`). Errors refuse the draft; warnings
    (volume cliffs) are reported by `plan_version_issues`."""
    rules = governance_validate(governance or {})
    latest = plan.versions.order_by("-version").first()
    version = PlanVersion.objects.create(
        plan=plan,
        version=(latest.version + 1) if latest else 1,
        currency=currency.upper(),
        base_fee=base_fee,
        minimum_commitment=minimum_commitment,
        effective_from=effective_from,
        **rules,
    )
    for position, spec in enumerate(components):
        tiers = spec.get("tiers") or []
        component = PriceComponent.objects.create(
            plan_version=version,
            position=position,
            token_class=spec["token_class"],
            aliases=sorted(set(spec.get("aliases") or [])),
            charge_model=spec["charge_model"],
            unit_tokens=spec.get("unit_tokens", 1_000_000),
            unit_price=spec.get("unit_price", Decimal(0)),
            package_units=spec.get("package_units", Decimal(1)),
            included_tokens=spec.get("included_tokens", 0),
            rounding=spec.get("rounding", "ROUND_HALF_UP"),
            description=spec.get("description", ""),
        )
        PriceTier.objects.bulk_create(
            PriceTier(
                component=component,
                position=i,
                up_to=t.get("up_to"),
                unit_price=t.get("unit_price", Decimal(0)),
                flat_fee=t.get("flat_fee", Decimal(0)),
            )
            for i, t in enumerate(tiers)
        )
    errors = [i for i in plan_version_issues(version=version) if i.severity == "error"]
    if errors:
        raise PlanInvalid("The plan version is invalid.", {"issues": _issues_payload(errors)})
    return version


GOVERNANCE_FIELDS = (
    "allowed_efforts",
    "default_max_output_tokens",
    "max_output_tokens",
    "monthly_reasoning_tokens",
    "reasoning_mode",
)


def governance_validate(governance: dict[str, Any]) -> dict[str, Any]:
    """The plan's reasoning governance, checked; raises PlanInvalid naming every problem."""
    problems = [f"unknown field {name!r}" for name in governance if name not in GOVERNANCE_FIELDS]
    efforts = governance.get("allowed_efforts") or []
    if not isinstance(efforts, list) or any(e not in EFFORTS for e in efforts):
        problems.append(f"allowed_efforts must be a list of {', '.join(EFFORTS)}")
    for name in ("default_max_output_tokens", "max_output_tokens", "monthly_reasoning_tokens"):
        value = governance.get(name)
        if value is not None and (type(value) is not int or value <= 0):
            problems.append(f"{name} must be a positive integer or null")
    default, cap = governance.get("default_max_output_tokens"), governance.get("max_output_tokens")
    if type(default) is int and type(cap) is int and default > cap:
        problems.append("default_max_output_tokens is above max_output_tokens")
    if governance.get("reasoning_mode", "clamp") not in ("clamp", "refuse"):
        problems.append("reasoning_mode must be 'clamp' or 'refuse'")
    if problems:
        raise PlanInvalid("The plan's reasoning governance is invalid.", {"problems": problems})
    return {**governance, "allowed_efforts": sorted(set(efforts), key=EFFORTS.index)}


def plan_version_issues(*, version: PlanVersion) -> list[pricing.PlanIssue]:
    """Errors and warnings: the plan's own (tiers, scopes, volume cliffs) and prices below
    the cost floor of any alias they cover (billing.hardware)."""
    from billing.hardware import floor_breaches

    fresh = PlanVersion.objects.get(pk=version.pk)  # never a stale prefetch
    plan = plan_version_pricing(fresh)
    issues = pricing.validate_plan(plan)
    if not any(i.severity == "error" for i in issues):
        issues += floor_breaches(plan)
    return issues


@transaction.atomic
def plan_version_publish(*, version: PlanVersion) -> PlanVersion:
    version = PlanVersion.objects.select_for_update().get(pk=version.pk)
    if version.is_published:
        return version  # idempotent
    errors = [i for i in plan_version_issues(version=version) if i.severity == "error"]
    if errors:
        raise PlanInvalid("The plan version is invalid.", {"issues": _issues_payload(errors)})
    version.status = PlanVersion.Status.PUBLISHED
    version.published_at = timezone.now()
    version.save(update_fields=["status", "published_at"])
    return version


def ensure_draft(version: PlanVersion) -> None:
    if version.is_published:
        raise Conflict("A published plan version is immutable; create a new version instead.")


# --- subscriptions -------------------------------------------------------------------


@transaction.atomic
def subscription_create(
    *, tenant: Tenant, plan_version: PlanVersion, starts_at: datetime, anchor_day: int = 1
) -> Subscription:
    """Subscribe a tenant from `starts_at` (rounded up to the next whole UTC hour)."""
    if not plan_version.is_published:
        raise ApplicationError("Only a published plan version can be subscribed to.")
    if not 1 <= anchor_day <= 28:
        raise ApplicationError("anchor_day must be within 1..28.")
    starts_at = ceil_hour(starts_at)
    if starts_at < plan_version.effective_from:
        raise ApplicationError("The plan version is not effective yet at that time.")
    Tenant.objects.select_for_update().get(pk=tenant.pk)  # serialize changes per tenant
    if Subscription.objects.filter(tenant=tenant, ends_at__isnull=True).exists():
        raise Conflict("The tenant already has an open subscription; change its plan instead.")
    if Subscription.objects.filter(tenant=tenant, ends_at__gt=starts_at).exists():
        raise Conflict("The new subscription would overlap an earlier one.")
    try:
        return Subscription.objects.create(
            tenant=tenant, plan_version=plan_version, starts_at=starts_at, anchor_day=anchor_day
        )
    except IntegrityError as exc:
        raise Conflict("The tenant's subscription changed concurrently.") from exc


@transaction.atomic
def subscription_change_plan(
    *, subscription: Subscription, plan_version: PlanVersion, at: datetime
) -> Subscription:
    """Move to another plan version from `at` (rounded up to the next whole UTC hour).

    The current billing period splits into segments, each rated on its own version.
    """
    Tenant.objects.select_for_update().filter(pk=subscription.tenant_id).values_list("pk").get()
    current = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if current.ends_at is not None:
        raise Conflict("This subscription has ended; change the tenant's current one.")
    if not plan_version.is_published:
        raise ApplicationError("Only a published plan version can be subscribed to.")
    if plan_version.currency != current.plan_version.currency:
        raise ApplicationError("A plan change cannot switch currency inside a subscription.")
    at = ceil_hour(at)
    if at <= current.starts_at:
        raise ApplicationError("The change must come after the current subscription starts.")
    from billing.models import Invoice

    invoiced_until = (
        Invoice.objects.filter(tenant_id=current.tenant_id)
        .exclude(status__in=[Invoice.Status.VOID, Invoice.Status.DRAFT])
        .order_by("-period_end")
        .values_list("period_end", flat=True)
        .first()
    )
    if invoiced_until is not None and at < invoiced_until:
        raise ApplicationError(
            f"{at:%Y-%m-%d %H:%M} falls in a period already invoiced (until "
            f"{invoiced_until:%Y-%m-%d}); a plan change cannot re-price it. Use a credit note."
        )
    current.ends_at = at
    current.save(update_fields=["ends_at"])
    return Subscription.objects.create(
        tenant_id=current.tenant_id,
        plan_version=plan_version,
        starts_at=at,
        anchor_day=current.anchor_day,
        previous=current,
    )


# --- rating --------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRating:
    start: datetime
    end: datetime
    subscription_id: int
    plan_version_id: int
    share: Decimal  # the segment's exact fraction of the period
    rated: pricing.RatedInvoice


@dataclass(frozen=True)
class PeriodRating:
    tenant_id: uuid.UUID
    period: Period
    currency: str
    segments: tuple[SegmentRating, ...]
    total_minor: int
    cutoff_record_id: int  # highest usage record included

    @property
    def lines(self) -> list[pricing.RatedLine]:
        return [line for s in self.segments for line in s.rated.lines]


UsageSource = Callable[[uuid.UUID, datetime, datetime], UsageTotals]


def usage_from_rollups(tenant_id: uuid.UUID, start: datetime, end: datetime) -> UsageTotals:
    return usage_totals(by="alias", tenant_id=tenant_id, start=start, end=end)


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
                rated=pricing.rate(plan, pricing.UsageVector(usage.tokens)),
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
    usage = usage_totals(by="tenant", start=period.start, end=period.end)
    totals: dict[uuid.UUID, int] = {}
    for tenant_id, tenant_subs in by_tenant.items():
        spans = segments(period, [(s.starts_at, s.ends_at, s) for s in tenant_subs])
        if len(spans) == 1 and spans[0].start == period.start and spans[0].end == period.end:
            plan = plan_version_pricing(spans[0].item.plan_version)
            vector = pricing.UsageVector(usage.get(tenant_id, NO_USAGE).tokens)
            totals[tenant_id] = pricing.rate(plan, vector).total_minor
        else:
            totals[tenant_id] = period_rate(tenant_id=tenant_id, period=period).total_minor
    return totals
