"""What an operator watches: the tenants nearest their limits, and the warnings of the plan
versions tenants are subscribed to now.

Both read through the one home of their rules: a tenant's budgets are
`billing.alerts.budgets_of` (what the proxy holds calls against and alerts fire on), a
plan version's problems are `billing.plans.plan_version_issues` (volume cliffs from
`validate_plan`, prices under the cost floor from `floor_breaches`), exactly what the
plan-version API and the admin show. Neither keeps a second copy of those rules, so the
cost is theirs per tenant and per plan version in use: a few queries each.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Q

from billing.alerts import (
    Budget,
    BudgetState,
    alert_thresholds_of,
    budget_state,
    budgets_of,
    tenants_with_budgets,
)
from billing.models import PlanVersion
from billing.plans import plan_version_issues
from billing.pricing.validate import PlanIssue
from metering.calendar import month_start
from metering.models import SpendLimit, Tenant
from metering.selectors import spend_since_by_tenant


@dataclass(frozen=True)
class TenantNearLimit:
    tenant_id: uuid.UUID
    tenant_name: str
    tenant_active: bool
    budget: Budget  # the tenant's budget with the highest used / limit
    share: Decimal | None  # used / limit; None for a limit of zero (nothing allowed)
    budgets: int  # how many budgets the tenant has
    # ok / warn / bad at the tenant's alert thresholds (`billing.alerts.budget_state`)
    state: BudgetState
    thresholds: tuple[int, ...]


def _share(budget: Budget) -> Decimal | None:
    return None if budget.limit <= 0 else budget.used / budget.limit


def _rank(near: TenantNearLimit) -> tuple[int, Decimal, str]:
    """Fullest first: a zero limit already used ahead of every share, then by share."""
    if near.share is None:
        return (0 if near.budget.used > 0 else 2, Decimal(0), near.tenant_name)
    return (1, -near.share, near.tenant_name)


# Each tenant costs `budgets_of`'s few queries (its budgets are read one tenant at a
# time), so the page checks at most this many tenants and says how many it skipped; which
# ones is `scan_order`'s choice.
SCAN_LIMIT = 200


def scan_order(tenant_ids: list[uuid.UUID], at: datetime) -> list[uuid.UUID]:
    """`tenant_ids`, the likeliest fullest first: ranked by month-to-date spend over their
    tenant-wide monthly spend limits, the most common budget, in two set-based reads
    (`spend_since_by_tenant`, the limits); then the others in their given order. Only the
    order is estimated: the figures shown are each checked tenant's `budgets_of`."""
    spent = spend_since_by_tenant(since=month_start(at))
    limits: dict[uuid.UUID, Decimal] = {}
    for tenant_id, amount in SpendLimit.objects.filter(
        tenant_id__in=tenant_ids, api_key__isnull=True, window=SpendLimit.Window.MONTH
    ).values_list("tenant_id", "amount_usd"):
        limits[tenant_id] = min(Decimal(amount), limits.get(tenant_id, Decimal(amount)))

    def fullness(tenant_id: uuid.UUID) -> Decimal:
        limit = limits.get(tenant_id)
        if limit is None:
            return Decimal(-1)
        used = spent.get(tenant_id, Decimal(0))
        return used / limit if limit > 0 else (Decimal("1e30") if used > 0 else Decimal(0))

    position = {tenant_id: i for i, tenant_id in enumerate(tenant_ids)}
    return sorted(tenant_ids, key=lambda t: (-fullness(t), position[t]))


@dataclass(frozen=True)
class NearestLimits:
    rows: list[TenantNearLimit]  # fullest first
    checked: int  # tenants whose budgets were read
    total: int  # tenants with a budget (`tenants_with_budgets`)


def tenants_nearest_limits(
    *, at: datetime, limit: int = 50, scan: int | None = None
) -> NearestLimits:
    """Per tenant with a budget (`tenants_with_budgets`, at most `scan` of them, default
    `SCAN_LIMIT`, in `scan_order`), its fullest budget at `at`; the `limit` fullest
    tenants, fullest first."""
    every = tenants_with_budgets(at)
    ids = scan_order(every, at)[: SCAN_LIMIT if scan is None else scan]
    tenants = {t.pk: t for t in Tenant.objects.filter(pk__in=ids).only("pk", "name", "is_active")}
    thresholds = alert_thresholds_of(ids)
    found = []
    for tenant_id in ids:
        budgets = budgets_of(tenant_id, at)
        if not budgets or tenant_id not in tenants:
            continue
        ranked = [
            TenantNearLimit(
                tenant_id=tenant_id,
                tenant_name=tenants[tenant_id].name,
                tenant_active=tenants[tenant_id].is_active,
                budget=b,
                share=_share(b),
                budgets=len(budgets),
                state=budget_state(b, thresholds[tenant_id]),
                thresholds=thresholds[tenant_id],
            )
            for b in budgets
        ]
        found.append(min(ranked, key=_rank))
    return NearestLimits(rows=sorted(found, key=_rank)[:limit], checked=len(ids), total=len(every))


@dataclass(frozen=True)
class PlanWarnings:
    version: PlanVersion
    subscriptions: int  # subscriptions to it in force at the instant asked
    issues: list[PlanIssue]  # errors and warnings, as the plan-version API lists them


def plan_warnings(*, at: datetime) -> list[PlanWarnings]:
    """Every published plan version with a subscription in force at `at`, with its issues
    (those with issues first, then by plan code and version)."""
    in_force = Q(subscriptions__starts_at__lte=at) & (
        Q(subscriptions__ends_at__isnull=True) | Q(subscriptions__ends_at__gt=at)
    )
    versions = (
        PlanVersion.objects.filter(status=PlanVersion.Status.PUBLISHED)
        .annotate(in_force=Count("subscriptions", filter=in_force))
        .filter(in_force__gt=0)
        .select_related("plan")
        .order_by("plan__code", "version")
    )
    out = [
        PlanWarnings(version=v, subscriptions=v.in_force, issues=plan_version_issues(version=v))
        for v in versions
    ]
    return sorted(out, key=lambda w: not w.issues)
