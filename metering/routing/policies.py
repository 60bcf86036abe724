"""Which targets a call tries, in which order, and why (decision 0117, "Policies").

Pure: no ORM, no I/O. A call's first attempt follows the alias's policy over the healthy
targets (breaker closed, under their concurrency share); every later attempt goes down
the remaining healthy targets by priority (reason `failover`). When no target is healthy
the policy chooses among all of them, so a call always has at least one attempt.

The plan and its targets are read through Protocols (`metering.proxy.callers.AliasPlan`
and `RouteInfo` satisfy them), so this module imports nothing from Django.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from metering.routing.rules import EffortRule, parse_rules

POLICIES = ("fallback", "weighted", "cheapest", "effort")
__all__ = [  # EffortRule and parse_rules live in `rules`; policies' users get them here too
    "DEFAULT_COST_TIE_PPM",
    "POLICIES",
    "RETRYABLE_STATUSES",
    "EffortRule",
    "Features",
    "Pick",
    "PlanLike",
    "TargetLike",
    "TargetView",
    "choose",
    "parse_rules",
    "retryable_status",
]

# Costs within this many parts per million of the cheapest are a tie (RECKON_ROUTE_COST_TIE,
# 2%): broken by the lower learned p50 latency, then by priority.
DEFAULT_COST_TIE_PPM = 20_000

# Statuses after which the next target is tried (before any byte reached the client):
# rate limited, and server errors (529: Anthropic's "overloaded"). Any other 5xx too.
RETRYABLE_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504, 529})


def retryable_status(status: int) -> bool:
    """True when an upstream answer with `status` is the target's fault (429 or 5xx),
    not the request's (any other 4xx): another target may well answer it."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


@dataclass(frozen=True, slots=True)
class Features:
    """What the policies know of a request."""

    effort: str  # after governance; "" none
    input_tokens: int  # the hold's estimate, ceil_tokens(body size)
    endpoint: str


@dataclass(frozen=True, slots=True)
class Pick:
    """One attempt: `index` into plan.targets, and the reason recorded as route_reason."""

    index: int
    # "priority" | "breaker" | "saturated" | "weight" | "cost" | "cost_tie_latency" |
    # "unpriced" | "rule:<name>" | "default" | "failover"
    reason: str


class TargetLike(Protocol):
    @property
    def route_id(self) -> int | None: ...
    @property
    def target(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> int: ...
    @property
    def max_concurrent(self) -> int | None: ...


class PlanLike(Protocol):
    @property
    def policy(self) -> str: ...
    @property
    def rules(self) -> Sequence[EffortRule]: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def targets(self) -> Sequence[TargetLike]: ...


class TargetView(Protocol):
    """What `choose` reads of live state (`metering.routing.state.RoutingState.view`)."""

    def is_open(self, route_id: int) -> bool: ...
    def saturated(self, route_id: int, max_concurrent: int | None) -> bool: ...
    def expected_cost_nano(self, route_id: int, effort: str, input_tokens: int) -> int | None: ...
    def p50_latency_ms(self, route_id: int, effort: str) -> int | None: ...


def _skip_reason(target: TargetLike, view: TargetView) -> str | None:
    """Why a target is passed over ("breaker" / "saturated"), None when healthy."""
    rid = target.route_id or 0
    if view.is_open(rid):
        return "breaker"
    if view.saturated(rid, target.max_concurrent):
        return "saturated"
    return None


def _fallback(order: list[int], skipped: dict[int, str], candidates: list[int]) -> Pick:
    first = candidates[0]
    before = [i for i in order[: order.index(first)] if i in skipped]
    return Pick(first, skipped[before[0]] if before else "priority")


def _weighted(plan: PlanLike, candidates: list[int], rng: random.Random) -> Pick:
    total = sum(max(plan.targets[i].weight, 0) for i in candidates)
    point = rng.random() * total  # float-ok: a share of traffic, not money
    if total <= 0:
        return Pick(candidates[0], "priority")
    running = 0
    for i in candidates:
        running += max(plan.targets[i].weight, 0)
        if point < running:
            return Pick(i, "weight")
    return Pick(candidates[-1], "weight")  # point == total: float edge


def _cheapest(
    plan: PlanLike, features: Features, view: TargetView, candidates: list[int], tie_ppm: int
) -> Pick:
    costs: dict[int, int] = {}
    for i in candidates:
        cost = view.expected_cost_nano(
            plan.targets[i].route_id or 0, features.effort, features.input_tokens
        )
        if cost is not None:
            costs[i] = cost
    if not costs:
        return Pick(candidates[0], "unpriced")
    low = min(costs.values())
    tied = [
        i for i in candidates if i in costs and costs[i] * 1_000_000 <= low * (1_000_000 + tie_ppm)
    ]
    if len(tied) == 1:
        return Pick(tied[0], "cost")

    def latency(i: int) -> int:
        ms = view.p50_latency_ms(plan.targets[i].route_id or 0, features.effort)
        return ms if ms is not None else 2**62  # unlearned: after every learned one

    # `tied` is in priority order and min() keeps the first of equals: priority breaks
    # what latency does not.
    return Pick(min(tied, key=latency), "cost_tie_latency")


def _effort(
    plan: PlanLike,
    features: Features,
    order: list[int],
    skipped: dict[int, str],
    candidates: list[int],
) -> Pick:
    by_name = {plan.targets[i].target: i for i in order}
    intended, reason = None, "default"
    for rule in plan.rules:
        if rule.target in by_name and rule.matches(features.effort, features.input_tokens):
            intended, reason = by_name[rule.target], f"rule:{rule.name}"
            break
    else:
        intended = by_name.get("default", order[0])
    if intended in candidates:
        return Pick(intended, reason)
    # The rule's target is out (open or full): the first healthy one by priority.
    return Pick(candidates[0], skipped.get(intended, reason))


def choose(
    plan: PlanLike,
    features: Features,
    view: TargetView,
    rng: random.Random,
    *,
    cost_tie_ppm: int | None = None,
) -> list[Pick]:
    """The attempts to make in order (at most plan.max_attempts): the policy's first
    choice, then the remaining healthy targets by priority, reason 'failover'. If every
    target is open/saturated, the policy's choice among ALL targets (never zero picks).
    `cost_tie_ppm` (None: the view's `cost_tie_ppm` if it has one, else 2%)."""
    if cost_tie_ppm is None:
        cost_tie_ppm = getattr(view, "cost_tie_ppm", DEFAULT_COST_TIE_PPM)
    targets = plan.targets
    if not targets:
        raise ValueError("a plan needs at least one target")
    order = sorted(range(len(targets)), key=lambda i: (targets[i].priority, targets[i].target))
    skipped: dict[int, str] = {}
    for i in order:
        reason = _skip_reason(targets[i], view)
        if reason is not None:
            skipped[i] = reason
    healthy = [i for i in order if i not in skipped]
    candidates = healthy or order

    policy = plan.policy
    if policy == "weighted":
        first = _weighted(plan, candidates, rng)
    elif policy == "cheapest":
        first = _cheapest(plan, features, view, candidates, cost_tie_ppm)
    elif policy == "effort":
        first = _effort(plan, features, order, skipped, candidates)
    else:  # "fallback", and any policy this code does not know: the safe order
        first = _fallback(order, skipped, candidates)

    picks = [first]
    limit = max(plan.max_attempts, 1)
    for i in candidates:
        if len(picks) >= limit:
            break
        if i != first.index:
            picks.append(Pick(i, "failover"))
    return picks
