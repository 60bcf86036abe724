"""What a controlled call is checked against: its budgets, its rate windows, its grant.

Amounts are integers in a budget's own unit (nano-units of money, 1e-9, rounded up from
the exact Decimal; or tokens), so a counter never under-counts.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, NamedTuple

from metering.control.governance import ReasoningRules

NANO = Decimal(1_000_000_000)


def tenant_tag(tenant_id: object) -> str:
    """The hash tag every Redis key of one tenant's spend control carries (`rk:{<tenant
    id>}:…`): on a Redis Cluster the keys of one script (the call's budgets, hold
    registers and rate windows, all of one tenant) must hash to one slot, and Redis
    hashes only the part in braces."""
    return "{" + str(tenant_id) + "}"


def key_tag(key: str) -> str:
    """The hash tag of a Redis key (`{…}`), or "" when it has none."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start : end + 1] if start >= 0 and end > start + 1 else ""


def generation_key(key: str) -> str:
    """The counter that numbers the loads of budget `key` (metering.control.scripts LOAD),
    in the budget's slot: one per tenant."""
    tag = key_tag(key)
    return f"rk:{tag}:budget-generation" if tag else "rk:budget-generation"


def to_nano(amount: Decimal) -> int:
    """Money to nano units (1e-9), rounded up (a counter must never under-count)."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class BudgetScope:
    """One budget a call is held against, in its own unit: nano-units of money for spend
    limits and prepaid balances, tokens for reasoning budgets."""

    key: str  # Redis hash for this budget and window
    kind: str  # "spend" | "balance" | "reasoning"
    label: str  # what a refusal or an alert calls it, e.g. "tenant monthly spend limit"
    limit: int
    ttl_s: int  # 0: no expiry (all-time budgets)
    # Loads the budget's durable use (in its unit) from the ledger when Redis lacks it.
    load_used: Callable[[], int] = field(compare=False)
    # Whose budget it is, and the percentages of it at which they are alerted.
    tenant_id: Any = field(default=None, compare=False)
    alert_at: tuple[int, ...] = field(default=(), compare=False)

    def crossed(self, before: int, after: int) -> bool:
        """Did use go from below to at-or-above one of the alert percentages?"""
        limit = self.limit
        return limit > 0 and any(before * 100 < t * limit <= after * 100 for t in self.alert_at)


class BudgetCost(NamedTuple):
    """What a call costs a budget as a function of the output tokens it is granted:
    `fixed + per_token * tokens` (both integers in the budget's unit, rounded up)."""

    fixed: int
    per_token: int


@dataclass(frozen=True)
class RateScope:
    name: str  # "key" or "tenant"
    scope_id: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    tenant_id: str  # whose window it is: the hash tag of its Redis key (tenant_tag)

    def window_key(self, window: int) -> str:
        """The Redis hash counting this scope's requests and tokens in minute `window`."""
        return f"rk:{tenant_tag(self.tenant_id)}:rl:{self.name}:{self.scope_id}:{window}"


class Grant(NamedTuple):
    """How many output tokens a call may spend: `out_max` when a `share` of the room left
    in its budgets covers it; otherwise that share, never less than `out_min` (else the
    call is refused). A call that names its maximum has out_min == out_max, share 1."""

    out_min: int
    out_max: int
    share: int = 1  # the most of the remaining room one call may take is room / share


@dataclass(frozen=True, slots=True)
class Controls:
    """What the proxy must check for this caller before forwarding (None when nothing)."""

    budgets: tuple[BudgetScope, ...]
    rates: tuple[RateScope, ...]
    # The plan's rules, then the key's (each can only narrow what the one before allows).
    reasoning: tuple[ReasoningRules, ...] = ()
    # Percentages of a budget at which the tenant is alerted.
    alert_thresholds: tuple[int, ...] = (50, 80, 100)
    # A reasoning budget in clamp mode applies: a call whose maximum the budgets cannot
    # cover is granted what is left (down to the plausible size) instead of refused.
    clamp_to_budget: bool = False
    # Some budget is in money (every call needs a price); computed, not passed.
    money_budgets: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "money_budgets", any(b.kind != "reasoning" for b in self.budgets))


def ceil_tokens(byte_length: int) -> int:
    """A generous input-token estimate from a request's size (about 3 bytes per token)."""
    return math.ceil(byte_length / 3)
