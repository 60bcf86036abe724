"""Budget and balance alerts: thresholds crossed, recorded once, handed to delivery.

Invariants:
- an alert fires at most once per (tenant, budget, period, threshold): the database's
  unique constraint decides, so evaluations may run concurrently and repeatedly;
- whether a threshold is crossed is decided in exact Decimal arithmetic (never float):
  used * 100 >= threshold * limit; a budget whose limit is not positive never fires;
- an alert is recorded even without an active webhook endpoint (delivery "no_endpoint"),
  so the usage API lists it;
- an alert to deliver is handed to billing.alert_delivery's task once its evaluation
  commits (signed webhooks, sent once: see that module).
"""

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, localcontext
from functools import partial
from typing import Any, assert_never

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from billing.alert_delivery import alert_deliver_task
from billing.balances import balance_state
from billing.models import Alert, BalanceAccount, Subscription, WebhookEndpoint
from billing.selectors import subscription_current
from metering.calendar import month_key, month_start
from metering.control.budgets import BudgetKind, budget_list, budget_tenant_ids, budget_use

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (50, 80, 100)
# Percentages an endpoint may configure (above 100: overspend of a soft budget).
THRESHOLD_RANGE = range(1, 1001)
# Enough digits for any product of two stored amounts: Inexact is trapped, so a rounded
# comparison raises instead of silently deciding a boundary wrongly.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation])
_STORED = Decimal("1e-12")  # Alert.used / Alert.limit keep 12 decimals


@dataclass(frozen=True)
class Budget:
    """One budget of a tenant as it stands at an instant."""

    # "spend_limit:<id>", "balance", "reasoning_budget:plan", "reasoning_budget:key:<id>".
    key: str
    description: str
    # The window the usage counts in: "2026-11", "total", or the balance's epoch.
    period: str
    unit: str  # "USD" (or the balance's currency), "reasoning_tokens"
    used: Decimal
    limit: Decimal


# --- pure helpers ----------------------------------------------------------------------


def thresholds_of(configured: Any) -> tuple[int, ...]:
    """An endpoint's thresholds, sorted and de-duplicated; the defaults when none (or
    none valid) are configured."""
    if not isinstance(configured, list):
        return DEFAULT_THRESHOLDS
    valid = {
        t
        for t in configured
        if isinstance(t, int) and not isinstance(t, bool) and t in THRESHOLD_RANGE
    }
    return tuple(sorted(valid)) or DEFAULT_THRESHOLDS


def thresholds_crossed(*, used: Decimal, limit: Decimal, thresholds: tuple[int, ...]) -> list[int]:
    """The thresholds t with used * 100 >= t * limit, exactly. Nothing for a limit <= 0
    (a zero budget has no percentage to cross)."""
    if limit <= 0:
        return []
    with localcontext(_EXACT):
        scaled = Decimal(used) * 100
        return [t for t in thresholds if scaled >= Decimal(t) * Decimal(limit)]


@dataclass(frozen=True)
class BudgetState:
    """How near its limit a budget is: the one rule the console's meters (a member's
    overview, the staff's tenants page) and the watchlist share."""

    state: str  # "ok"; "warn": an alert threshold crossed; "bad": the limit reached
    percent: Decimal | None  # used / limit in percent, to 0.1 (None: no positive limit)


_PERCENT = Decimal("0.1")


def budget_state(budget: Budget, thresholds: tuple[int, ...]) -> BudgetState:
    """ "bad" from 100 % on (and for a limit that is not positive: nothing is allowed),
    "warn" once any of the tenant's alert `thresholds` is crossed (exactly as
    `thresholds_crossed` decides what alerts fire), else "ok"."""
    if budget.limit <= 0:
        return BudgetState(state="bad", percent=None)
    with localcontext(_EXACT):
        percent = Decimal(budget.used) * 100 / Decimal(budget.limit)
    percent = percent.quantize(_PERCENT, ROUND_HALF_UP, Context(prec=200))
    if budget.used >= budget.limit:
        state = "bad"
    elif thresholds_crossed(used=budget.used, limit=budget.limit, thresholds=thresholds):
        state = "warn"
    else:
        state = "ok"
    return BudgetState(state=state, percent=percent)


# --- reads -----------------------------------------------------------------------------


def _key_label(prefix: str) -> str:
    return f"key {prefix}…"


def budgets_of(tenant_id: uuid.UUID, at: datetime) -> list[Budget]:
    """Every budget of the tenant that can fire, as it stands at `at` (the list the proxy
    holds calls against: metering.control.budgets)."""
    at = at.astimezone(UTC)
    since_month = month_start(at)
    month = month_key(at)
    state = balance_state(tenant_id, at)
    subscription = subscription_current(tenant_id=tenant_id, at=at)
    plan = subscription.plan_version if subscription is not None else None
    specs = budget_list(
        tenant_id=tenant_id,
        api_key_id=None,
        balance=state is not None and state.available > 0,
        plan_reasoning_tokens=plan.monthly_reasoning_tokens if plan is not None else None,
    )
    budgets: list[Budget] = []
    for spec in specs:
        used = budget_use(spec, tenant_id=tenant_id, month=since_month)
        match spec.kind:
            case BudgetKind.SPEND:
                assert spec.limit is not None and used is not None
                scope = _key_label(spec.key_prefix) if spec.owner == "key" else "the tenant"
                budget = Budget(
                    key=f"spend_limit:{spec.spend_limit_id}",
                    description=(
                        f"{'Monthly' if spec.monthly else 'All-time'} spend limit of {scope}"
                    ),
                    period=month if spec.monthly else "total",
                    unit="USD",
                    used=used,
                    limit=spec.limit,
                )
            case BudgetKind.BALANCE:
                assert state is not None
                epoch = state.watermark.isoformat() if state.watermark else "start"
                budget = Budget(
                    key="balance",
                    description=f"Prepaid balance ({state.currency})",
                    # a top-up (new available) or an invoice (new watermark) re-arms them
                    period=f"{epoch}/{state.available}",
                    unit=state.currency,
                    used=state.uninvoiced_spend,
                    limit=state.available,
                )
            case BudgetKind.REASONING:
                assert spec.limit is not None and used is not None
                if spec.owner == "plan":
                    assert plan is not None
                    key, of = "reasoning_budget:plan", f"plan {plan.plan.code}"
                else:
                    key, of = f"reasoning_budget:key:{spec.api_key_id}", _key_label(spec.key_prefix)
                budget = Budget(
                    key=key,
                    description=f"Monthly reasoning-token budget of {of}",
                    period=month,
                    unit="reasoning_tokens",
                    used=used,
                    limit=spec.limit,
                )
            case _:
                assert_never(spec.kind)
        budgets.append(budget)
    return budgets


def alerts_for_tenant(
    *, tenant_id: uuid.UUID, budget: str | None = None, since: datetime | None = None
) -> QuerySet[Alert]:
    """The tenant's alerts (the usage API lists them newest first): budget alerts only,
    never the operator's (reconciliation alerts have no tenant)."""
    alerts = Alert.objects.filter(
        kind=Alert.Kind.BUDGET, tenant_id__isnull=False, tenant_id=tenant_id
    )
    if budget:
        alerts = alerts.filter(budget=budget)
    if since is not None:
        alerts = alerts.filter(created_at__gte=since)
    return alerts


def alert_thresholds(tenant_id: uuid.UUID) -> tuple[int, ...]:
    """The percentages at which the tenant's budgets alert: its active endpoint's, else
    the defaults (what `alerts_evaluate` fires on; the console's meters show them)."""
    return _thresholds_of_endpoint(_active_endpoint(tenant_id))


def alert_thresholds_of(tenant_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, tuple[int, ...]]:
    """`alert_thresholds` of many tenants in one query (the first active endpoint by pk of
    each, as `_active_endpoint` picks it)."""
    first: dict[uuid.UUID, WebhookEndpoint] = {}
    for endpoint in WebhookEndpoint.objects.filter(
        tenant_id__in=list(tenant_ids), is_active=True
    ).order_by("pk"):
        first.setdefault(endpoint.tenant_id, endpoint)
    return {t: _thresholds_of_endpoint(first.get(t)) for t in tenant_ids}


def _thresholds_of_endpoint(endpoint: WebhookEndpoint | None) -> tuple[int, ...]:
    # The thresholds of the active endpoint, else the defaults: what the proxy checks.
    return thresholds_of(endpoint.thresholds if endpoint else None)


def _active_endpoint(tenant_id: uuid.UUID) -> WebhookEndpoint | None:
    # The first active endpoint by pk: with two active, every call picks the same one.
    return (
        WebhookEndpoint.objects.filter(tenant_id=tenant_id, is_active=True).order_by("pk").first()
    )


def tenants_with_budgets(at: datetime) -> list[uuid.UUID]:
    """Every tenant with a budget: those metering configures (spend limits, key reasoning
    budgets), and those billing does: a balance account, a plan reasoning budget in
    force at `at`."""
    ids = budget_tenant_ids()
    for kind in BudgetKind:
        match kind:
            case BudgetKind.SPEND:
                pass  # metering's alone
            case BudgetKind.BALANCE:
                ids |= set(BalanceAccount.objects.values_list("tenant_id", flat=True))
            case BudgetKind.REASONING:  # the plan's; a key's is metering's
                ids |= set(
                    Subscription.objects.filter(
                        plan_version__monthly_reasoning_tokens__isnull=False, starts_at__lte=at
                    )
                    .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
                    .values_list("tenant_id", flat=True)
                )
            case _:
                assert_never(kind)
    return sorted(ids, key=str)


# --- writes ----------------------------------------------------------------------------


@transaction.atomic
def alerts_evaluate(*, tenant_id: uuid.UUID, at: datetime | None = None) -> list[Alert]:
    """Record an alert for every threshold the tenant's budgets have crossed that has not
    fired in its period yet, and schedule their delivery once committed. Returns the
    alerts this call created (a concurrent evaluation's alerts are not repeated)."""
    at = at or timezone.now()
    endpoint = _active_endpoint(tenant_id)
    thresholds = _thresholds_of_endpoint(endpoint)
    delivery = Alert.Delivery.PENDING if endpoint is not None else Alert.Delivery.NO_ENDPOINT
    budgets = budgets_of(tenant_id, at)
    fired = set(
        Alert.objects.filter(tenant_id=tenant_id, budget__in=[b.key for b in budgets]).values_list(
            "budget", "period", "threshold"
        )
    )
    created: list[Alert] = []
    for budget in budgets:
        crossed = thresholds_crossed(used=budget.used, limit=budget.limit, thresholds=thresholds)
        for threshold in crossed:
            if (budget.key, budget.period, threshold) in fired:
                continue
            # the unique constraint arbitrates a race: the loser gets the winner's row
            alert, was_created = Alert.objects.get_or_create(
                tenant_id=tenant_id,
                budget=budget.key,
                period=budget.period,
                threshold=threshold,
                defaults={
                    "event_id": uuid.uuid4(),
                    "description": budget.description[:300],
                    "unit": budget.unit,
                    "used": budget.used.quantize(_STORED, ROUND_HALF_UP, Context(prec=200)),
                    "limit": budget.limit.quantize(_STORED, ROUND_HALF_UP, Context(prec=200)),
                    "delivery": delivery,
                },
            )
            if was_created:
                created.append(alert)
    for alert in created:
        if alert.delivery == Alert.Delivery.PENDING:
            transaction.on_commit(partial(alert_deliver_task.delay, alert.pk))
    return created


STALE_PENDING = timedelta(minutes=10)


def alerts_evaluate_all(at: datetime | None = None) -> int:
    """Evaluate every tenant with a budget, each in its own transaction; one tenant's
    failure is logged and does not stop the others. Returns the alerts created."""
    at = at or timezone.now()
    created = 0
    for tenant_id in tenants_with_budgets(at):
        try:
            created += len(alerts_evaluate(tenant_id=tenant_id, at=at))
        except Exception:
            logger.exception("alert evaluation failed for tenant %s", tenant_id)
    # A delivery that could not be queued (broker down at commit) is queued again here;
    # delivery is idempotent, so one queued twice is still sent once.
    stale = Alert.objects.filter(
        delivery=Alert.Delivery.PENDING, created_at__lt=at - STALE_PENDING
    ).values_list("pk", flat=True)
    for alert_id in stale:
        alert_deliver_task.delay(alert_id)
    return created
