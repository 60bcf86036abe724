"""The pure choice of targets: every policy and every reason, failover order, limits."""

import random
from dataclasses import dataclass, field

import pytest

from metering.routing import rules
from metering.routing.policies import (
    EffortRule,
    Features,
    Pick,
    choose,
    parse_rules,
    retryable_status,
)


@dataclass(frozen=True)
class T:
    route_id: int
    target: str
    priority: int = 0
    weight: int = 100
    max_concurrent: int | None = None


@dataclass(frozen=True)
class P:
    policy: str
    targets: tuple[T, ...]
    max_attempts: int = 2
    rules: tuple[EffortRule, ...] = ()


@dataclass
class View:
    open: set[int] = field(default_factory=set)
    full: set[int] = field(default_factory=set)
    costs: dict[int, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    asked: list[tuple[int, str, int]] = field(default_factory=list)

    def is_open(self, route_id: int) -> bool:
        return route_id in self.open

    def saturated(self, route_id: int, max_concurrent: int | None) -> bool:
        return route_id in self.full

    def expected_cost_nano(self, route_id: int, effort: str, input_tokens: int) -> int | None:
        self.asked.append((route_id, effort, input_tokens))
        return self.costs.get(route_id)

    def p50_latency_ms(self, route_id: int, effort: str) -> int | None:
        return self.latency.get(route_id)


A, B, C = T(1, "a", priority=0), T(2, "b", priority=1), T(3, "c", priority=2)
NONE = Features(effort="", input_tokens=100, endpoint="chat.completions")


def picks(plan: P, view: View, features: Features = NONE, seed: int = 1) -> list[tuple[str, str]]:
    return [
        (plan.targets[p.index].target, p.reason)
        for p in choose(plan, features, view, random.Random(seed))
    ]


@pytest.mark.parametrize(
    ("view", "max_attempts", "expected"),
    [
        (View(), 3, [("a", "priority"), ("b", "failover"), ("c", "failover")]),
        (View(), 2, [("a", "priority"), ("b", "failover")]),
        (View(), 1, [("a", "priority")]),
        (View(open={1}), 3, [("b", "breaker"), ("c", "failover")]),
        (View(full={1}), 3, [("b", "saturated"), ("c", "failover")]),
        # The first skipped target names the reason.
        (View(full={1}, open={2}), 3, [("c", "saturated")]),
        (View(open={2}), 3, [("a", "priority"), ("c", "failover")]),
        # Nothing healthy: the policy's choice among all, and failover down all of them.
        (View(open={1, 2, 3}), 2, [("a", "priority"), ("b", "failover")]),
    ],
)
def test_fallback(view: View, max_attempts: int, expected: list[tuple[str, str]]) -> None:
    # Targets given out of order: priority decides, not position.
    plan = P("fallback", (C, A, B), max_attempts=max_attempts)
    assert picks(plan, view) == expected


def test_priority_ties_break_by_name_and_unknown_policy_is_fallback() -> None:
    plan = P("no-such-policy", (T(1, "z"), T(2, "m")), max_attempts=2)
    assert picks(plan, View()) == [("m", "priority"), ("z", "failover")]


def test_weighted_80_20_within_tolerance() -> None:
    plan = P("weighted", (T(1, "big", weight=80), T(2, "small", weight=20)), max_attempts=2)
    rng = random.Random(20260101)
    view = View()
    counts = {0: 0, 1: 0}
    for _ in range(10_000):
        got = choose(plan, NONE, view, rng)
        assert got[0].reason == "weight"
        assert got[1] == Pick(1 - got[0].index, "failover")
        counts[got[0].index] += 1
    assert abs(counts[0] / 10_000 - 0.80) <= 0.015
    assert counts[0] + counts[1] == 10_000


def test_weighted_renormalizes_over_healthy_targets() -> None:
    plan = P("weighted", (T(1, "a", weight=50), T(2, "b", weight=30), T(3, "c", weight=20)))
    rng = random.Random(7)
    view = View(open={1})
    counts = {"b": 0, "c": 0}
    for _ in range(5_000):
        first = choose(plan, NONE, view, rng)[0]
        counts[plan.targets[first.index].target] += 1
    # 30 : 20 of what is left = 60% / 40%.
    assert abs(counts["b"] / 5_000 - 0.60) <= 0.03
    assert "a" not in counts


def test_weighted_draws_once_and_zero_weights() -> None:
    class CountingRandom(random.Random):
        draws = 0

        def random(self) -> float:
            self.draws += 1
            return super().random()

    rng = CountingRandom(3)
    plan = P("weighted", (T(1, "a"), T(2, "b")))
    choose(plan, NONE, View(), rng)
    assert rng.draws == 1
    zero = P("weighted", (T(1, "a", weight=0, priority=1), T(2, "b", weight=0)))
    assert picks(zero, View()) == [("b", "priority"), ("a", "failover")]
    # A zero weight never gets first picks while another target has weight.
    some = P("weighted", (T(1, "a", weight=0), T(2, "b", weight=1)))
    assert {picks(some, View(), seed=s)[0] for s in range(50)} == {("b", "weight")}


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (View(costs={1: 1000, 2: 900, 3: 950}), [("b", "cost"), ("a", "failover")]),
        # Within 2% of the cheapest: a tie, the lower p50 latency wins.
        (
            View(costs={1: 1000, 2: 990, 3: 5000}, latency={1: 200, 2: 900}),
            [("a", "cost_tie_latency"), ("b", "failover")],
        ),
        # Exactly 2% above is still a tie; just above is not.
        (
            View(costs={1: 1020, 2: 1000}, latency={1: 1}),
            [("a", "cost_tie_latency"), ("b", "failover")],
        ),
        (View(costs={1: 1021, 2: 1000}, latency={1: 1}), [("b", "cost"), ("a", "failover")]),
        # Tie with no learned latency: priority.
        (View(costs={1: 1000, 2: 1000}), [("a", "cost_tie_latency"), ("b", "failover")]),
        # A learned latency beats an unlearned one.
        (
            View(costs={1: 1000, 2: 1000}, latency={2: 5000}),
            [("b", "cost_tie_latency"), ("a", "failover")],
        ),
        # Unpriced targets rank after priced ones, even a cheaper-looking priority.
        (View(costs={3: 10**9}), [("c", "cost"), ("a", "failover")]),
        # No target priced: priority order, reason unpriced.
        (View(), [("a", "unpriced"), ("b", "failover")]),
        # The cheapest is open: the next cheapest.
        (View(costs={1: 100, 2: 300, 3: 200}, open={1}), [("c", "cost"), ("b", "failover")]),
        # Zero cost is a price (free capacity), and ties only with zero.
        (View(costs={1: 1, 2: 0}), [("b", "cost"), ("a", "failover")]),
    ],
)
def test_cheapest(view: View, expected: list[tuple[str, str]]) -> None:
    assert picks(P("cheapest", (A, B, C)), view) == expected


def test_cheapest_asks_with_the_request_features() -> None:
    view = View(costs={1: 1000, 2: 960}, latency={1: 10, 2: 20})
    high = Features(effort="high", input_tokens=4321, endpoint="responses")
    got = choose(P("cheapest", (A, B)), high, view, random.Random(0))
    # 1000 is 4.2% above 960: not a tie, so latency does not matter.
    assert got[0] == Pick(1, "cost")
    assert (1, "high", 4321) in view.asked and (2, "high", 4321) in view.asked


def test_cheapest_tie_setting() -> None:
    view = View(costs={1: 1000, 2: 960}, latency={1: 10, 2: 20})
    plan = P("cheapest", (A, B))
    assert choose(plan, NONE, view, random.Random(0), cost_tie_ppm=0)[0] == Pick(1, "cost")
    # A view may carry the setting (RoutingState's does).
    view.cost_tie_ppm = 50_000  # type: ignore[attr-defined]
    assert choose(plan, NONE, view, random.Random(0))[0] == Pick(0, "cost_tie_latency")
    assert choose(plan, NONE, view, random.Random(0), cost_tie_ppm=50_000)[0] == Pick(
        0, "cost_tie_latency"
    )


RULES = (
    EffortRule("light", frozenset({"minimal", "low"}), 2000, "mini"),
    EffortRule("deep", frozenset({"high"}), None, "strong"),
    EffortRule("huge", frozenset(), None, "nowhere"),  # names no target: never matches
)
MINI, STRONG, DEFAULT = (
    T(1, "mini", priority=1),
    T(2, "strong", priority=2),
    T(3, "default", priority=0),
)


@pytest.mark.parametrize(
    ("effort", "tokens", "view", "expected"),
    [
        ("low", 100, View(), [("mini", "rule:light"), ("default", "failover")]),
        ("minimal", 2000, View(), [("mini", "rule:light"), ("default", "failover")]),
        # Too large for `light`.
        ("low", 2001, View(), [("default", "default"), ("mini", "failover")]),
        ("high", 10**6, View(), [("strong", "rule:deep"), ("default", "failover")]),
        ("medium", 10, View(), [("default", "default"), ("mini", "failover")]),
        ("", 10, View(), [("default", "default"), ("mini", "failover")]),
        # The rule's target is out: the first healthy by priority, saying why.
        ("high", 10, View(open={2}), [("default", "breaker"), ("mini", "failover")]),
        ("low", 10, View(full={1}), [("default", "saturated"), ("strong", "failover")]),
        ("", 10, View(open={3}), [("mini", "breaker"), ("strong", "failover")]),
    ],
)
def test_effort(effort: str, tokens: int, view: View, expected: list[tuple[str, str]]) -> None:
    plan = P("effort", (MINI, STRONG, DEFAULT), rules=RULES)
    assert picks(plan, view, Features(effort, tokens, "chat.completions")) == expected


def test_effort_without_a_default_target_takes_priority_order() -> None:
    plan = P("effort", (MINI, STRONG), rules=RULES)
    assert picks(plan, View(), Features("medium", 1, "messages")) == [
        ("mini", "default"),
        ("strong", "failover"),
    ]


def test_a_plan_with_no_targets_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        choose(P("fallback", ()), NONE, View(), random.Random(0))


@pytest.mark.parametrize("status", [429, 500, 501, 502, 503, 504, 529, 599])
def test_retryable(status: int) -> None:
    assert retryable_status(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 409, 413, 422, 600])
def test_not_retryable(status: int) -> None:
    assert not retryable_status(status)


def test_rules_are_the_aliases_own() -> None:
    """One EffortRule and one parser: policies re-exports metering.routing.rules'."""
    assert EffortRule is rules.EffortRule and parse_rules is rules.parse_rules
    assert parse_rules([{"name": "light", "efforts": ["low"], "target": "mini"}]) == (
        EffortRule("light", frozenset({"low"}), None, "mini"),
    )
