"""Writes on plans and subscriptions: plan versions (draft, validated, published and
then immutable), their reasoning governance, and subscribing a tenant or changing its
plan (a change splits the current period into segments, each rated on its own version:
billing/period_rating.py).
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.costs.margins import floor_breaches
from billing.models import Invoice, Plan, PlanVersion, PriceComponent, PriceTier, Subscription
from billing.pricing.periods import ceil_hour
from billing.pricing.validate import PlanInvalid, PlanIssue, validate_plan
from billing.selectors import plan_version_pricing
from config.errors import ApplicationError, Conflict
from metering.control.governance import EFFORTS
from metering.models import Tenant

# --- plans ---------------------------------------------------------------------------


@transaction.atomic
def plan_create(*, code: str, name: str) -> Plan:
    if Plan.objects.filter(code=code).exists():
        raise Conflict(f"A plan with code {code!r} exists.")
    return Plan.objects.create(code=code, name=name)


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
        raise PlanInvalid.of(errors, "The plan version is invalid.")
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


def plan_version_issues(*, version: PlanVersion) -> list[PlanIssue]:
    """Errors and warnings: the plan's own (tiers, scopes, volume cliffs) and prices below
    the cost floor of any alias they cover (billing.costs.catalogue)."""
    fresh = PlanVersion.objects.get(pk=version.pk)  # never a stale prefetch
    plan = plan_version_pricing(fresh)
    issues = validate_plan(plan)
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
        raise PlanInvalid.of(errors, "The plan version is invalid.")
    version.status = PlanVersion.Status.PUBLISHED
    version.published_at = timezone.now()
    version.save(update_fields=["status", "published_at"])
    return version


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
    invoiced_until = (
        Invoice.objects.filter(tenant_id=current.tenant_id)
        .exclude(status=Invoice.Status.VOID)
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
