"""The budgets a call counts against: one list, for the proxy's admission and for alerts.

A tenant's budgets are, in this order: its spend limits (the tenant's and its keys',
monthly or all-time), its prepaid balance, the plan's monthly reasoning-token budget, and
each key's monthly reasoning-token budget. `budget_list` builds that list; a new kind of
budget is added there, once:
- the proxy holds a call against the ones that apply to its key (`budget_scopes`: in
  nano-units of money or in tokens, named in Redis by whose budget and which window);
- billing's alerts evaluate every one of the tenant's, with its use from the ledger
  (`billing.alerts.budgets_of`).
`budget_loader` is the inverse of the Redis names: how the periodic rebuild reads a
budget's use back from the ledger.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q

from metering.calendar import month_key, month_of_key, month_start
from metering.control import terms
from metering.control.scopes import BudgetScope, to_nano
from metering.models import ApiKey, ReasoningPolicy, SpendLimit
from metering.selectors import reasoning_tokens_since, spend_since

MONTH_TTL_S = 40 * 86400  # a monthly budget outlives its month in Redis, then goes

Loader = Callable[[], int]


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget of a tenant, as configured (its use is each consumer's to read)."""

    kind: str  # "spend" | "balance" | "reasoning"
    # The key whose budget it is; None: the tenant's (spend, balance) or its plan's.
    api_key_id: int | None
    # Counts the calendar month's use; else all time (spend) or the balance's epoch.
    monthly: bool
    # The limit: USD for a spend limit, tokens for a reasoning budget; None for the
    # balance (what it holds is the consumer's figure: credits now, or at an instant).
    limit: Decimal | None
    # Reasoning: a call past the budget is refused (else granted what is left).
    refuse: bool = False
    # Spend: the SpendLimit row's id. Key budgets: the key's display prefix.
    spend_limit_id: int | None = None
    key_prefix: str = ""


def budget_list(
    *,
    tenant_id: uuid.UUID,
    api_key_id: int | None,
    balance: bool,
    plan_reasoning_tokens: int | None,
    plan_refuses: bool = False,
) -> list[BudgetSpec]:
    """The tenant's budgets in their fixed order: those of the tenant and of key
    `api_key_id` (a call's), or of the tenant and every key (api_key_id None: alerts).
    `balance`: the tenant has a prepaid balance that counts; `plan_reasoning_tokens`:
    its plan's monthly reasoning budget (None: none)."""
    limits = SpendLimit.objects.filter(tenant_id=tenant_id).select_related("api_key")
    if api_key_id is not None:
        limits = limits.filter(Q(api_key__isnull=True) | Q(api_key_id=api_key_id))
    budgets = [
        BudgetSpec(
            kind="spend",
            api_key_id=limit.api_key_id,
            monthly=limit.window == SpendLimit.Window.MONTH,
            limit=Decimal(limit.amount_usd),
            spend_limit_id=limit.pk,
            key_prefix=limit.api_key.prefix if limit.api_key else "",
        )
        for limit in limits.order_by("pk")
    ]
    if balance:
        budgets.append(BudgetSpec(kind="balance", api_key_id=None, monthly=False, limit=None))
    if plan_reasoning_tokens is not None:
        budgets.append(
            BudgetSpec(
                kind="reasoning",
                api_key_id=None,
                monthly=True,
                limit=Decimal(plan_reasoning_tokens),
                refuse=plan_refuses,
            )
        )
    policies = ReasoningPolicy.objects.filter(
        api_key__tenant_id=tenant_id, monthly_reasoning_tokens__isnull=False
    ).select_related("api_key")
    if api_key_id is not None:
        policies = policies.filter(api_key_id=api_key_id)
    for policy in policies.order_by("api_key_id"):
        assert policy.monthly_reasoning_tokens is not None  # filtered above
        budgets.append(
            BudgetSpec(
                kind="reasoning",
                api_key_id=policy.api_key_id,
                monthly=True,
                limit=Decimal(policy.monthly_reasoning_tokens),
                refuse=policy.mode == ReasoningPolicy.Mode.REFUSE,
                key_prefix=policy.api_key.prefix,
            )
        )
    return budgets


def budget_scopes(
    specs: list[BudgetSpec],
    *,
    tenant_id: uuid.UUID,
    tenant_terms: terms.TenantTerms,
    now: datetime,
) -> list[BudgetScope]:
    """The budgets of a call as Redis counts them: in nano-units of money or in tokens,
    each named by whose budget it is and which window (`budget_loader` reads the names)."""
    month = month_start(now)
    alert_at = tenant_terms.alert_thresholds
    scopes = []
    for spec in specs:
        who = f"key:{spec.api_key_id}" if spec.api_key_id else f"tenant:{tenant_id}"
        owner = "key" if spec.api_key_id else "tenant"
        if spec.kind == "spend":
            assert spec.limit is not None
            scopes.append(
                BudgetScope(
                    key=f"rk:spend:{who}:" + (month_key(month) if spec.monthly else "total"),
                    kind="spend",
                    label=owner + (" monthly" if spec.monthly else " all-time") + " spend limit",
                    limit=to_nano(spec.limit),
                    ttl_s=MONTH_TTL_S if spec.monthly else 0,
                    load_used=_spent_loader(
                        tenant_id=tenant_id,
                        api_key_id=spec.api_key_id,
                        since=month if spec.monthly else None,
                    ),
                    tenant_id=tenant_id,
                    alert_at=alert_at,
                )
            )
        elif spec.kind == "balance":
            balance = tenant_terms.balance
            assert balance is not None
            scopes.append(
                BudgetScope(
                    key=f"rk:balance:{tenant_id}:{balance.epoch}",
                    kind="balance",
                    label="prepaid balance",
                    limit=to_nano(max(balance.available, Decimal(0))),
                    ttl_s=MONTH_TTL_S,
                    load_used=_balance_loader(balance.load_used),
                    tenant_id=tenant_id,
                    alert_at=alert_at,
                )
            )
        else:
            assert spec.limit is not None
            scopes.append(
                BudgetScope(
                    key=f"rk:reasoning:{who}:{month_key(month)}",
                    kind="reasoning",
                    label=("key" if spec.api_key_id else "plan")
                    + " monthly reasoning-token budget",
                    limit=int(spec.limit),
                    ttl_s=MONTH_TTL_S,
                    load_used=_reasoning_loader(
                        tenant_id=tenant_id, api_key_id=spec.api_key_id, since=month
                    ),
                    tenant_id=tenant_id,
                    alert_at=alert_at,
                )
            )
    return scopes


def _spent_loader(
    *, tenant_id: uuid.UUID, api_key_id: int | None, since: datetime | None
) -> Loader:
    return lambda: to_nano(spend_since(tenant_id=tenant_id, api_key_id=api_key_id, since=since))


def _reasoning_loader(*, tenant_id: uuid.UUID, api_key_id: int | None, since: datetime) -> Loader:
    return lambda: reasoning_tokens_since(tenant_id=tenant_id, api_key_id=api_key_id, since=since)


def _balance_loader(load_used: Callable[[], Decimal]) -> Loader:
    return lambda: to_nano(load_used())


def budget_loader(key: str) -> Loader | None:
    """How to read budget `key`'s use from the ledger, in its unit (the inverse of the
    names `budget_scopes` gives), or None for a key no longer current (a balance's old
    epoch) or not understood."""
    parts = key.split(":")
    if len(parts) == 4 and parts[:2] == ["rk", "balance"]:
        balance = terms.tenant_terms_provider(uuid.UUID(parts[2]), []).balance
        if balance is None or balance.epoch != parts[3]:
            return None  # an old epoch: no call settles there any more, it expires
        return _balance_loader(balance.load_used)
    if len(parts) != 5 or parts[0] != "rk":
        return None
    _, kind, who, ident, window = parts
    if who == "tenant":
        tenant_id, key_id = uuid.UUID(ident), None
    elif who == "key":
        key_id = int(ident)
        found = ApiKey.objects.filter(pk=key_id).values_list("tenant_id", flat=True).first()
        if found is None:
            return None
        tenant_id = found
    else:
        return None
    since = None if window == "total" else month_of_key(window)
    if kind == "spend":
        return _spent_loader(tenant_id=tenant_id, api_key_id=key_id, since=since)
    if kind == "reasoning" and since is not None:
        return _reasoning_loader(tenant_id=tenant_id, api_key_id=key_id, since=since)
    return None
