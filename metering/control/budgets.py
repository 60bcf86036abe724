"""The budgets a call counts against: one list, for the proxy's admission and for alerts.

A tenant's budgets are, in this order: its spend limits (the tenant's and its keys',
monthly or all-time), its prepaid balance, the plan's monthly reasoning-token budget, and
each key's monthly reasoning-token budget. `budget_list` builds that list and
`BudgetKind` closes the kinds; every consumer dispatches on the kind exhaustively
(`match` + `assert_never`), so a new kind is added here and then wherever mypy points:
- the proxy holds a call against the ones that apply to its key (`budget_scopes`: in
  nano-units of money or in tokens, named in Redis by kind, whose budget and which window);
- billing's alerts evaluate every one of the tenant's, with its use from the ledger
  (`budget_use`; `billing.alerts.budgets_of`), for the tenants `budget_tenant_ids` names
  (and those billing's own budgets add).
`budget_loader` is the inverse of the Redis names: how the periodic rebuild reads a
budget's use back from the ledger. Past this module a budget is a BudgetScope, whose
counts the hot path reads as tokens for a reasoning budget and as money otherwise
(metering.control.holds, scopes): a new kind in tokens must be added there too.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from operator import itemgetter
from typing import Literal, assert_never

from django.db.models import Q

from metering.calendar import month_key, month_of_key, month_start
from metering.control import terms
from metering.control.scopes import BudgetScope, tenant_tag, to_nano
from metering.models import ApiKey, ReasoningPolicy, SpendLimit
from metering.selectors import reasoning_tokens_since, spend_since

MONTH_TTL_S = 40 * 86400  # a monthly budget outlives its month in Redis, then goes

Loader = Callable[[], int]


class BudgetKind(StrEnum):
    """What a budget limits. The value names it in Redis (`rk:{<tenant>}:<kind>:…`) and
    is BudgetScope.kind."""

    SPEND = "spend"  # USD spent: a SpendLimit, the tenant's or a key's, monthly or all-time
    BALANCE = "balance"  # money drawn from the tenant's prepaid balance since its epoch
    REASONING = "reasoning"  # reasoning tokens in the month: the plan's budget or a key's


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget of a tenant, as configured (its use is each consumer's to read)."""

    kind: BudgetKind
    # The key whose budget it is; None: the tenant's (spend, balance) or its plan's
    # (reasoning).
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

    @property
    def owner(self) -> Literal["key", "tenant", "plan"]:
        """Whose budget it is: a key's, else the tenant's own or (reasoning) its plan's."""
        if self.api_key_id is not None:
            return "key"
        match self.kind:
            case BudgetKind.SPEND | BudgetKind.BALANCE:
                return "tenant"
            case BudgetKind.REASONING:
                return "plan"
            case _:
                assert_never(self.kind)

    @property
    def label(self) -> str:
        """What a refusal calls it, e.g. "tenant monthly spend limit"."""
        match self.kind:
            case BudgetKind.SPEND:
                window = "monthly" if self.monthly else "all-time"
                return f"{self.owner} {window} spend limit"
            case BudgetKind.BALANCE:
                return "prepaid balance"
            case BudgetKind.REASONING:
                return f"{self.owner} monthly reasoning-token budget"
            case _:
                assert_never(self.kind)


def budget_specs(
    *,
    spend_limits: Iterable[tuple[int, int | None, bool, Decimal, str]],
    balance: bool,
    plan_reasoning_tokens: int | None,
    plan_refuses: bool = False,
    key_reasoning: Iterable[tuple[int, int, bool, str]] = (),
) -> list[BudgetSpec]:
    """Budgets in their fixed order: spend limits by pk (`spend_limits`: pk, the key's id
    or None for the tenant's, monthly, amount USD, the key's prefix), the prepaid balance
    (`balance`: one that counts), the plan's monthly reasoning budget, then key reasoning
    budgets by key (`key_reasoning`: key id, tokens, refuse, prefix). A deterministic
    order, so a call's holds and the alerts list the same budgets the same way every time.
    The one home of the rule: `budget_list` reads its rows from the database, the proxy's
    caller loader from its cached context."""
    budgets = [
        BudgetSpec(
            kind=BudgetKind.SPEND,
            api_key_id=owner,
            monthly=monthly,
            limit=amount,
            spend_limit_id=pk,
            key_prefix=prefix if owner is not None else "",
        )
        for pk, owner, monthly, amount, prefix in sorted(spend_limits, key=itemgetter(0))
    ]
    if balance:
        budgets.append(
            BudgetSpec(kind=BudgetKind.BALANCE, api_key_id=None, monthly=False, limit=None)
        )
    if plan_reasoning_tokens is not None:
        budgets.append(
            BudgetSpec(
                kind=BudgetKind.REASONING,
                api_key_id=None,
                monthly=True,
                limit=Decimal(plan_reasoning_tokens),
                refuse=plan_refuses,
            )
        )
    for key_id, tokens, refuse, prefix in sorted(key_reasoning, key=itemgetter(0)):
        budgets.append(
            BudgetSpec(
                kind=BudgetKind.REASONING,
                api_key_id=key_id,
                monthly=True,
                limit=Decimal(tokens),
                refuse=refuse,
                key_prefix=prefix,
            )
        )
    return budgets


def budget_list(
    *,
    tenant_id: uuid.UUID,
    api_key_id: int | None,
    balance: bool,
    plan_reasoning_tokens: int | None,
    plan_refuses: bool = False,
) -> list[BudgetSpec]:
    """The tenant's budgets (`budget_specs`' order): those of the tenant and of key
    `api_key_id` (a call's), or of the tenant and every key (api_key_id None: alerts).
    `balance`: the tenant has a prepaid balance that counts; `plan_reasoning_tokens`:
    its plan's monthly reasoning budget (None: none)."""
    limits = SpendLimit.objects.filter(tenant_id=tenant_id).select_related("api_key")
    if api_key_id is not None:
        limits = limits.filter(Q(api_key__isnull=True) | Q(api_key_id=api_key_id))
    policies = ReasoningPolicy.objects.filter(
        api_key__tenant_id=tenant_id, monthly_reasoning_tokens__isnull=False
    ).select_related("api_key")
    if api_key_id is not None:
        policies = policies.filter(api_key_id=api_key_id)
    return budget_specs(
        spend_limits=[
            (
                limit.pk,
                limit.api_key_id,
                limit.window == SpendLimit.Window.MONTH,
                Decimal(limit.amount_usd),
                limit.api_key.prefix if limit.api_key else "",
            )
            for limit in limits
        ],
        balance=balance,
        plan_reasoning_tokens=plan_reasoning_tokens,
        plan_refuses=plan_refuses,
        key_reasoning=[
            (
                policy.api_key_id,
                policy.monthly_reasoning_tokens,
                policy.mode == ReasoningPolicy.Mode.REFUSE,
                policy.api_key.prefix,
            )
            for policy in policies
            if policy.monthly_reasoning_tokens is not None  # filtered above
        ],
    )


def budget_tenant_ids() -> set[uuid.UUID]:
    """The tenants with a budget configured in metering: a spend limit (the tenant's or a
    key's) or a key's monthly reasoning budget. A prepaid balance and a plan's reasoning
    budget are billing's to find (`billing.alerts.tenants_with_budgets`)."""
    ids: set[uuid.UUID] = set()
    for kind in BudgetKind:
        match kind:
            case BudgetKind.SPEND:
                ids |= set(SpendLimit.objects.values_list("tenant_id", flat=True))
            case BudgetKind.BALANCE:
                pass  # billing's BalanceAccount
            case BudgetKind.REASONING:  # a key's; the plan's is billing's Subscription
                ids |= set(
                    ReasoningPolicy.objects.filter(
                        monthly_reasoning_tokens__isnull=False
                    ).values_list("api_key__tenant_id", flat=True)
                )
            case _:
                assert_never(kind)
    return ids


def budget_use(spec: BudgetSpec, *, tenant_id: uuid.UUID, month: datetime) -> Decimal | None:
    """What the ledger says budget `spec` of the tenant has used in its window (`month`:
    the current month's start), in its unit: USD spent, reasoning tokens. None for the
    balance, whose use is the balance's own figure (billing's, or the tenant's terms)."""
    match spec.kind:
        case BudgetKind.SPEND:
            since = month if spec.monthly else None
            return spend_since(tenant_id=tenant_id, api_key_id=spec.api_key_id, since=since)
        case BudgetKind.BALANCE:
            return None
        case BudgetKind.REASONING:
            return Decimal(
                reasoning_tokens_since(tenant_id=tenant_id, api_key_id=spec.api_key_id, since=month)
            )
        case _:
            assert_never(spec.kind)


def budget_scopes(
    specs: list[BudgetSpec],
    *,
    tenant_id: uuid.UUID,
    tenant_terms: terms.TenantTerms,
    now: datetime,
) -> list[BudgetScope]:
    """The budgets of a call as Redis counts them: in nano-units of money or in tokens,
    each named by kind, whose budget it is and which window (`budget_loader` reads the
    names)."""
    month = month_start(now)
    return [
        _scope(spec, tenant_id=tenant_id, tenant_terms=tenant_terms, month=month) for spec in specs
    ]


def budget_key(*, tenant_id: uuid.UUID, kind: str, who: str, window: str) -> str:
    """A budget's Redis name: `rk:{<tenant>}:<kind>:<who>:<window>`. The tenant in braces
    is the hash tag (metering.control.scopes.tenant_tag) that keeps every key of one
    tenant's call in one Redis Cluster slot."""
    return f"rk:{tenant_tag(tenant_id)}:{kind}:{who}:{window}"


def _scope(
    spec: BudgetSpec, *, tenant_id: uuid.UUID, tenant_terms: terms.TenantTerms, month: datetime
) -> BudgetScope:
    who = f"key:{spec.api_key_id}" if spec.api_key_id is not None else f"tenant:{tenant_id}"
    match spec.kind:
        case BudgetKind.SPEND:
            assert spec.limit is not None
            window = month_key(month) if spec.monthly else "total"
            limit = to_nano(spec.limit)
            ttl_s = MONTH_TTL_S if spec.monthly else 0
            load_used = _spent_loader(
                tenant_id=tenant_id,
                api_key_id=spec.api_key_id,
                since=month if spec.monthly else None,
            )
        case BudgetKind.BALANCE:
            balance = tenant_terms.balance
            assert balance is not None
            who, window = str(tenant_id), balance.epoch
            limit = to_nano(max(balance.available, Decimal(0)))
            ttl_s = MONTH_TTL_S
            load_used = _balance_loader(balance.load_used)
        case BudgetKind.REASONING:
            assert spec.limit is not None
            window = month_key(month)
            limit = int(spec.limit)
            ttl_s = MONTH_TTL_S
            load_used = _reasoning_loader(
                tenant_id=tenant_id, api_key_id=spec.api_key_id, since=month
            )
        case _:
            assert_never(spec.kind)
    return BudgetScope(
        key=budget_key(tenant_id=tenant_id, kind=spec.kind, who=who, window=window),
        kind=spec.kind,
        label=spec.label,
        limit=limit,
        ttl_s=ttl_s,
        load_used=load_used,
        tenant_id=tenant_id,
        alert_at=tenant_terms.alert_thresholds,
    )


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
    if len(parts) < 3 or parts[0] != "rk" or parts[2] not in set(BudgetKind):
        return None
    tag, kind, rest = parts[1], BudgetKind(parts[2]), parts[3:]
    tenant = _tenant_of_tag(tag)
    if tenant is None:
        return None
    match kind:
        case BudgetKind.BALANCE:
            if len(rest) != 2 or rest[0] != str(tenant):
                return None
            balance = terms.tenant_terms_provider(tenant, []).balance
            if balance is None or balance.epoch != rest[1]:
                return None  # an old epoch: no call settles there any more, it expires
            return _balance_loader(balance.load_used)
        case BudgetKind.SPEND | BudgetKind.REASONING:
            if len(rest) != 3:
                return None
            owner = _owner(rest[0], rest[1])
            if owner is None or owner[0] != tenant:
                return None
            tenant_id, key_id = owner
            window = rest[2]
            since = None if window == "total" else month_of_key(window)
            if kind == BudgetKind.SPEND:
                return _spent_loader(tenant_id=tenant_id, api_key_id=key_id, since=since)
            if since is None:
                return None  # a reasoning budget is monthly: "total" is no name of ours
            return _reasoning_loader(tenant_id=tenant_id, api_key_id=key_id, since=since)
        case _:
            assert_never(kind)


def _tenant_of_tag(tag: str) -> uuid.UUID | None:
    if not (tag.startswith("{") and tag.endswith("}")):
        return None
    try:
        return uuid.UUID(tag[1:-1])
    except ValueError:
        return None


def _owner(who: str, ident: str) -> tuple[uuid.UUID, int | None] | None:
    """The tenant and key (None: the tenant's or its plan's) a Redis name's
    `<who>:<ident>` part names, or None when the key is gone or the part not ours."""
    if who == "tenant":
        return uuid.UUID(ident), None
    if who == "key":
        key_id = int(ident)
        tenant_id = ApiKey.objects.filter(pk=key_id).values_list("tenant_id", flat=True).first()
        return None if tenant_id is None else (tenant_id, key_id)
    return None
