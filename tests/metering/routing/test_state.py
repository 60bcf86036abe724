"""A process's routing state with a fake clock on the real Redis: breakers shared between
two states (two processes), local trips, one probe, concurrency shares, Redis down; the
expected-cost table in exact integers, and its loading from the database."""

import asyncio
import itertools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.utils import timezone

from metering.models import RouteExpectation, ServingCostRate
from metering.routing.breaker import PROCS_KEY, BreakerConfig, probe_key
from metering.routing.policies import EffortRule, Features, Pick, choose
from metering.routing.state import (
    Expectation,
    Expected,
    RoutingState,
    TargetRates,
    cost_table,
    load_costs,
)
from tests.factories import RouteFactory

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DOWN = "redis://127.0.0.1:1/0"  # nothing listens there
_alias_ids = itertools.count(random.randrange(10**9, 2 * 10**9))
_route_ids = itertools.count(random.randrange(10**9, 2 * 10**9), 10)
NONE = Features("", 1000, "chat.completions")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # float-ok: seconds

    def __call__(self) -> float:  # float-ok: seconds
        return self.now


@dataclass(frozen=True)
class T:
    route_id: int
    target: str
    priority: int = 0
    weight: int = 100
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Plan:
    alias_pk: int
    targets: tuple[T, ...]
    policy: str = "fallback"
    max_attempts: int = 2
    rules: tuple[EffortRule, ...] = field(default=())


def plan_of(*, max_concurrent: int | None = None, policy: str = "fallback") -> Plan:
    first = next(_route_ids)
    return Plan(
        next(_alias_ids),
        (T(first, "a", 0, max_concurrent=max_concurrent), T(first + 1, "b", 1)),
        policy=policy,
    )


def no_costs(route_ids: Sequence[int]) -> tuple[dict[int, TargetRates], list[Expectation]]:
    return {}, []


def state(clock: Clock, url: str | None = URL, **options) -> RoutingState:  # type: ignore[no-untyped-def]
    return RoutingState(url, clock=clock, config=BreakerConfig(), load=no_costs, **options)


async def settled(*states: RoutingState) -> None:
    """Wait for the breaker reports the states sent in the background."""
    for s in states:
        while s._tasks:
            await asyncio.gather(*list(s._tasks), return_exceptions=True)


def first(s: RoutingState, plan: Plan) -> tuple[str, str]:
    pick = s.choose(plan, NONE, random.Random(0))[0]
    return plan.targets[pick.index].target, pick.reason


def test_breaker_shared_between_processes_local_trip_and_probe() -> None:
    async def go() -> None:
        clock = Clock()
        a, b = state(clock), state(clock)
        plan = plan_of()
        ra, rb = plan.targets[0].route_id, plan.targets[1].route_id
        a.watch(plan)
        b.watch(plan)
        try:
            # One failure: out of process a at once, before Redis answers ...
            a.report(plan, ra, ok=False)
            assert a.view.is_open(ra) and first(a, plan) == ("b", "breaker")
            await settled(a)
            # ... and back once Redis says one failure does not open it.
            assert not a.view.is_open(ra) and first(a, plan) == ("a", "priority")
            # Successes ride along with the next failure: 4 failures + 5 successes = 44%.
            for _ in range(5):
                a.report(plan, ra, ok=True)
            for _ in range(3):
                a.report(plan, ra, ok=False)
                await settled(a)
            assert not a.view.is_open(ra)
            a.report(plan, ra, ok=False)  # 5 of 10: opens (>= 50%)
            await settled(a)
            assert a.view.is_open(ra)
            # Process b learns it from the next refresh.
            assert first(b, plan) == ("a", "priority")
            await b.refresh_breakers()
            assert first(b, plan) == ("b", "breaker")
            assert not b.needs_probe(ra)
            # Cooldown over: half-open. The refresh asks for the probe; one process wins.
            clock.now += 30
            await a.refresh_breakers()
            await b.refresh_breakers()
            assert not a.needs_probe(ra) and b.needs_probe(ra)
            assert first(a, plan) == ("a", "priority")  # a's next call is the probe
            assert first(b, plan) == ("b", "breaker")
            assert await b.probe_allowed(plan, ra) is False
            assert await b.probe_allowed(plan, rb) is True  # a closed target: no question
            # The probe starts: a sends nothing more there until it ends.
            a.acquire(ra)
            assert first(a, plan) == ("b", "breaker")
            # It succeeds: closed everywhere.
            a.report(plan, ra, ok=True)
            a.release(ra)
            assert not a.view.is_open(ra)
            await settled(a)
            clock.now += 1
            await b.refresh_breakers()
            assert not b.view.is_open(ra) and not b.needs_probe(ra)
            assert first(b, plan) == ("a", "priority")
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_successes_before_the_window_do_not_hold_the_breaker_closed() -> None:
    async def go() -> None:
        clock = Clock()
        a = state(clock)
        plan = plan_of()
        ra = plan.targets[0].route_id
        try:
            for _ in range(100):  # a healthy target, never a failure to report them with
                a.report(plan, ra, ok=True)
            clock.now += 11  # past the 10 s window: then it dies
            for _ in range(5):
                a.report(plan, ra, ok=False)
                await settled(a)
            assert a.view.is_open(ra)  # 5 failures, 0 successes in the window
        finally:
            await a.close()

    asyncio.run(go())


def test_failed_probe_reopens_with_doubled_cooldown() -> None:
    async def go() -> None:
        clock = Clock()
        a, b = state(clock), state(clock)
        plan = plan_of()
        ra = plan.targets[0].route_id
        try:
            for _ in range(5):
                a.report(plan, ra, ok=False)
                await settled(a)
            clock.now += 30
            await a.refresh_breakers()  # wins the probe
            a.acquire(ra)
            a.report(plan, ra, ok=False)
            a.release(ra)
            await settled(a)
            clock.now += 59
            await a.refresh_breakers()
            assert a.view.is_open(ra)
            clock.now += 1
            assert a.view.is_open(ra) and a.needs_probe(ra)  # half-open, no probe yet
            await a.refresh_breakers()
            assert not a.view.is_open(ra) and not a.needs_probe(ra)
            # A probe nobody used is let go, here and in Redis: another process may win
            # it at once (not only when Redis's key lapses), then this one again.
            clock.now += 30
            assert a.view.is_open(ra) and a.needs_probe(ra)
            await a.refresh_breakers()  # lets go, and leaves this round to the others
            assert a.view.is_open(ra)
            assert redis.Redis.from_url(URL).exists(probe_key(plan.alias_pk, ra)) == 0
            b.watch(plan)
            await b.refresh_breakers()
            assert not b.view.is_open(ra)  # b won it
            await a.refresh_breakers()
            assert a.view.is_open(ra)
            clock.now += 30
            await b.refresh_breakers()  # b let go too
            await a.refresh_breakers()
            assert not a.view.is_open(ra)
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_concurrency_shares_across_processes() -> None:
    async def go() -> None:
        redis.Redis.from_url(URL).delete(PROCS_KEY)
        clock = Clock()
        a, b = state(clock), state(clock)
        plan = plan_of(max_concurrent=3)
        ra = plan.targets[0].route_id
        a.watch(plan)
        try:
            await a.refresh_breakers()
            assert a.processes == 1
            for _ in range(2):
                a.acquire(ra)
            assert not a.view.saturated(ra, 3)  # alone: all 3 are this process's
            await b.refresh_breakers()
            await a.refresh_breakers()
            assert a.processes == 2
            assert a.view.saturated(ra, 3)  # ceil(3 / 2) = 2 in flight
            assert first(a, plan) == ("b", "saturated")
            a.release(ra)
            assert first(a, plan) == ("a", "priority")
            # b goes away: a's share is whole again after its heartbeat lapses.
            await b.close()
            await a.refresh_breakers()
            assert a.processes == 1
        finally:
            await a.close()

    asyncio.run(go())


def test_redis_down_answers_and_keeps_local_breakers() -> None:
    async def go() -> None:
        clock = Clock()
        s = state(clock, DOWN)
        plan = plan_of()
        ra = plan.targets[0].route_id
        try:
            await s.refresh_breakers()  # no error
            assert first(s, plan) == ("a", "priority")
            s.report(plan, ra, ok=False)
            await settled(s)
            assert not s.view.is_open(ra)  # one failure: not enough
            for _ in range(4):
                s.report(plan, ra, ok=False)
                await settled(s)
            assert s.view.is_open(ra) and first(s, plan) == ("b", "breaker")
            # One more failure while out does not shorten it.
            clock.now += 10
            s.report(plan, ra, ok=False)
            await settled(s)
            clock.now += 19.9
            assert s.view.is_open(ra)
            clock.now += 0.1
            assert not s.view.is_open(ra)
            assert await s.probe_allowed(plan, ra)
            # Opening again with no success between: the cooldown doubles.
            for _ in range(5):
                s.report(plan, ra, ok=False)
                await settled(s)
            clock.now += 59.9
            assert s.view.is_open(ra)
            clock.now += 0.1
            assert not s.view.is_open(ra)
            # A retry-after keeps the target out that long, even on one failure.
            rb = plan.targets[1].route_id
            s.report(plan, rb, ok=False, retry_after_s=90)
            await settled(s)
            clock.now += 89
            assert s.view.is_open(rb)
            clock.now += 1
            assert not s.view.is_open(rb)
        finally:
            await s.close()

    asyncio.run(go())
    # And with no Redis at all.
    s = RoutingState(None, clock=Clock(), config=BreakerConfig(), load=no_costs)
    plan = plan_of()
    assert s.choose(plan, NONE, random.Random(0)) == [Pick(0, "priority"), Pick(1, "failover")]


def test_retry_after_is_capped_at_the_longest_cooldown() -> None:
    """Retry-After: 999999999 keeps a target out at most RECKON_ROUTE_BREAKER_MAX_COOLDOWN_S
    (here 300 s): before Redis answers, after it answers, and with Redis down."""

    async def go(url: str) -> None:
        clock = Clock()
        s = state(clock, url)
        plan = plan_of()
        ra = plan.targets[0].route_id
        start = s._now_ms()
        try:
            for _ in range(5):  # enough to open the breaker (Redis) or the local one (down)
                s.report(plan, ra, ok=False, retry_after_s=999_999_999)
            target = s._targets[ra]
            assert target.pending_until_ms == start + 300_000  # before any answer
            await settled(s)
            # The verdict (Redis's or the local breaker's): open until start + 300 s at most.
            until = max(target.remote.open_until_ms, target.local_open_ms, target.pending_until_ms)
            assert until == start + 300_000
            clock.now += 299.9
            assert s.view.is_open(ra)
            clock.now += 0.1
            await s.refresh_breakers()
            assert target.remote.open_until_ms <= s._now_ms()
            assert target.local_open_ms <= s._now_ms()
            assert target.pending_until_ms <= s._now_ms()
        finally:
            await s.close()

    asyncio.run(go(URL))
    asyncio.run(go(DOWN))


R = TargetRates(
    input=Decimal("0.50"),
    cache_read=Decimal("0.05"),
    cache_write=Decimal("1.00"),
    output=Decimal("2.00"),
    reasoning=Decimal("2.00"),
)


def row(
    rid: int, effort: str, samples: int, *, inp="0", cr="0", cw="0", out="0", rea="0", p50=None
):  # type: ignore[no-untyped-def]
    return Expectation(
        rid,
        effort,
        Decimal(inp),
        Decimal(cr),
        Decimal(cw),
        Decimal(out),
        Decimal(rea),
        p50,
        samples,
    )


def test_cost_table_exact() -> None:
    rows = [
        # target 1, high: 1000 input of which 600 cache reads, 100 writes; 300 out, 2000 reasoning
        row(1, "high", 60, inp="300", cr="600", cw="100", out="300", rea="2000", p50=1200),
        row(1, "low", 10, out="100"),  # too few: the alias's pooled low
        row(2, "low", 30, out="400"),
    ]
    table = cost_table({7: [1, 2, 3]}, {1: R, 2: R}, rows, min_samples=50)
    # p_in = (300 x 0.50 + 600 x 0.05 + 100 x 1.00) / 1000 = 0.28 USD/M = 280,000,000 nano/M
    # E_out = (300 + 2000) x 2.00 USD/M = 0.0046 USD = 4,600,000 nano
    assert table[1].by_effort["high"] == Expected(280_000_000, 4_600_000)
    # low pooled over targets 1 and 2: (10 x 100 + 30 x 400) / 40 = 325 out
    assert table[1].by_effort["low"] == Expected(500_000_000, 650_000)
    assert table[2].by_effort["low"] == Expected(500_000_000, 650_000)
    # target 2 has no high row: the alias's high pool (target 1's only row).
    assert table[2].by_effort["high"] == table[1].by_effort["high"]
    # An unknown effort: the target's own pool if >= 50 samples (target 1: 70), else the alias's.
    pool1_out = (Decimal(60 * 2300) + Decimal(10 * 100)) / 70
    assert table[1].other.output_nano == math.ceil(pool1_out * 2000) == 3_971_429
    assert 3 not in table  # no rate: unpriced
    # 1000 input tokens at 280,000,000 nano/M = 280,000 nano, + 4,600,000
    assert table[1].by_effort["high"].cost_nano(1000) == 4_880_000
    assert Expected(1, 0).cost_nano(1) == 1  # rounded up
    # No expectations at all: input at the input rate, no output.
    assert cost_table({1: [5]}, {5: R}, [])[5].other == Expected(500_000_000, 0)


def test_refresh_costs_and_cheapest() -> None:
    loads: list[list[int]] = []
    cheap = TargetRates(Decimal("0.1"), Decimal("0.1"), Decimal("0.1"), Decimal("1"), Decimal("1"))
    dear = TargetRates(Decimal("0.2"), Decimal("0.2"), Decimal("0.2"), Decimal("2"), Decimal("2"))
    rates = {}

    def load(route_ids: Sequence[int]) -> tuple[dict[int, TargetRates], list[Expectation]]:
        loads.append(list(route_ids))
        return dict(rates), [row(r, "high", 100, out="1000", p50=500) for r in route_ids]

    async def go() -> None:
        s = RoutingState(
            None, clock=Clock(), config=BreakerConfig(), load=load, costs_refresh_s=3600
        )
        plan = plan_of(policy="cheapest")
        ra, rb = plan.targets[0].route_id, plan.targets[1].route_id
        rates.update({ra: dear, rb: cheap})
        await s.start()
        try:
            s.watch(plan)  # a new alias wakes the cost refresh at once
            for _ in range(100):
                if s.view.expected_cost_nano(rb, "high", 0) is not None:
                    break
                await asyncio.sleep(0.01)
            assert loads[-1] == sorted([ra, rb])
            assert s.view.expected_cost_nano(rb, "high", 0) == 1_000_000
            assert s.view.expected_cost_nano(ra, "high", 1_000_000) == 200_000_000 + 2_000_000
            assert s.view.p50_latency_ms(ra, "high") == 500
            assert first(s, plan) == ("b", "cost")
            rates.update({ra: cheap, rb: dear})
            await s.refresh_costs()
            assert first(s, plan) == ("a", "cost")
            # The state's tie setting reaches `choose` through its view.
            assert s.view.cost_tie_ppm == 20_000
            s.cost_tie_ppm = 10**6  # 100%: every priced target ties, latency decides
            pick = choose(plan, Features("high", 0, "responses"), s.view, random.Random(0))[0]
            assert pick.reason == "cost_tie_latency"
        finally:
            await s.close()

    asyncio.run(go())


@pytest.mark.django_db
def test_load_costs_reads_each_targets_current_rate() -> None:
    a = RouteFactory(alias="routed", name="a")
    b = RouteFactory(alias="routed", name="b")
    c = RouteFactory(alias="routed", name="c", accelerator="amd-mi300x")
    now = timezone.now()
    fields = dict(
        alias="routed",
        accelerator="nvidia-h100-sxm",
        cache_read_usd=Decimal("0.1"),
        cache_write_usd=Decimal("0.1"),
        output_usd=Decimal("1"),
        reasoning_usd=Decimal("1"),
    )
    ServingCostRate.objects.create(
        route=a, effective_from=now - timedelta(days=2), input_usd=Decimal("9"), **fields
    )
    ServingCostRate.objects.create(
        route=a, effective_from=now - timedelta(days=1), input_usd=Decimal("3"), **fields
    )
    ServingCostRate.objects.create(
        route=a, effective_from=now + timedelta(days=1), input_usd=Decimal("7"), **fields
    )
    RouteExpectation.objects.create(
        route=b,
        reasoning_effort="low",
        mean_output_tokens=Decimal("12.5"),
        p50_latency_ms=300,
        samples=80,
        computed_at=now,
    )
    rates, expectations = load_costs([a.pk, b.pk])
    assert rates == {
        a.pk: TargetRates(Decimal("3"), Decimal("0.1"), Decimal("0.1"), Decimal("1"), Decimal("1"))
    }
    assert expectations == [row(b.pk, "low", 80, out="12.5", p50=300)]
    # A rate published for the alias before routing (no route) counts for b, not for a
    # (a has one of its own, even an older one) nor for c (on another accelerator: unpriced).
    ServingCostRate.objects.create(
        effective_from=now - timedelta(hours=1), input_usd=Decimal("5"), **fields
    )
    rates, _ = load_costs([a.pk, b.pk, c.pk])
    assert rates[a.pk].input == Decimal("3") and rates[b.pk].input == Decimal("5")
    assert c.pk not in rates


def test_the_callers_alias_plan_is_a_plan() -> None:
    """The caller context's AliasPlan and RouteInfo (metering.proxy.callers) are what
    `choose` and the state read."""
    from metering.proxy.callers import AliasPlan, RouteInfo
    from metering.routing.rules import parse_rules

    def info(route_id: int, target: str, priority: int) -> RouteInfo:
        return RouteInfo(
            alias="routed",
            provider="openai",
            upstream_model="m",
            accelerator="h100",
            base_url="http://127.0.0.1:9/v1",
            credential="",
            credential_missing=False,
            route_id=route_id,
            target=target,
            priority=priority,
        )

    rid = next(_route_ids)
    plan = AliasPlan(
        alias="routed",
        alias_pk=next(_alias_ids),
        policy="effort",
        rules=parse_rules([{"name": "light", "efforts": ["low"], "target": "mini"}]),
        max_attempts=2,
        targets=(info(rid, "default", 0), info(rid + 1, "mini", 1)),
    )
    s = RoutingState(None, clock=Clock(), config=BreakerConfig(), load=no_costs)
    low = Features("low", 10, "chat.completions")
    assert s.choose(plan, low, random.Random(0)) == [Pick(1, "rule:light"), Pick(0, "failover")]
    s.report(plan, rid + 1, ok=False)  # no Redis: local count, one failure is not enough
    assert s.choose(plan, low, random.Random(0))[0] == Pick(1, "rule:light")
