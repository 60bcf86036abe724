"""whatif_reroute: a month of one alias's calls re-routed with each policy, exact figures.

Usage (the routed world's targets and rates, one hour, through the ledger):
- h100, effort "high": 2 calls, 500 input, 100k output and 400k reasoning each
- mi, effort "low": 4 calls, 100 input, 10k output and 10k reasoning each
h100 has a learned expectation for "low" (20k output, 50k reasoning, 100 samples).
Rates per 1M: h100 input 0.1, output 1, reasoning 1; mi input 0.1, output 0.5,
reasoning 0.25. The tenant pays $4/M output and $2/M reasoning (input free).
Actual: h100 cost 0.2 + 0.8 + 0.0001 = 1.0001, revenue 0.8 + 1.6 = 2.4;
        mi cost 0.02 + 0.01 + 0.00004 = 0.03004, revenue 0.16 + 0.08 = 0.24.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.costs.margins import gross_margin
from billing.pricing.periods import Period
from billing.reroute import parse_weights, whatif_reroute
from config.errors import ApplicationError, NotFound
from metering.models import RouteExpectation
from tests.billing.routed_world import NOV, T0, RoutedWorld, rate_for, routed_world
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
PERIOD = Period(T0, NOV)


@pytest.fixture
def world() -> RoutedWorld:
    w = routed_world(usage=False)
    at = T0 + timedelta(days=5, hours=3)
    for _ in range(2):
        write_usage(
            w.key,
            at,
            w.h100_rate,
            route_id=w.h100.pk,
            reasoning_effort="high",
            input_tokens=500,
            output_tokens=100_000,
            reasoning_tokens=400_000,
        )
    for _ in range(4):
        write_usage(
            w.key,
            at,
            w.mi_rate,
            route_id=w.mi.pk,
            reasoning_effort="low",
            input_tokens=100,
            output_tokens=10_000,
            reasoning_tokens=10_000,
        )
    RouteExpectation.objects.create(
        route=w.h100,
        reasoning_effort="low",
        mean_output_tokens=20_000,
        mean_reasoning_tokens=50_000,
        samples=100,
        computed_at=timezone.now(),
    )
    return w


def figures(result) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    return {
        line.target: (
            line.actual_calls,
            line.actual_cost_usd,
            line.actual_revenue_usd,
            line.rerouted_calls,
            line.rerouted_tokens["output"],
            line.rerouted_tokens["reasoning"],
            line.rerouted_cost_usd,
            line.rerouted_revenue_usd,
        )
        for line in result.lines
    }


ACTUAL_H100 = (2, Decimal("1.0001"), Decimal("2.4"))
ACTUAL_MI = (4, Decimal("0.03004"), Decimal("0.24"))


def test_fallback_sends_everything_to_the_first_target_with_its_learned_tokens(world) -> None:  # type: ignore[no-untyped-def]
    result = whatif_reroute(period=PERIOD, alias="reasoner", policy="fallback")
    # low: 4 calls on h100 at its expectation (20k, 50k): 80k output, 200k reasoning
    assert figures(result) == {
        "h100": (*ACTUAL_H100, 6, 280_000, 1_000_000, Decimal("1.28014"), Decimal("3.12")),
        "mi": (*ACTUAL_MI, 0, 0, 0, Decimal(0), Decimal(0)),
    }
    assert result.realized_revenue_per_million == {"output": Decimal(4), "reasoning": Decimal(2)}
    assert result.calls == 6
    assert (result.actual_cost_usd, result.actual_revenue_usd) == (
        Decimal("1.03014"),
        Decimal("2.64"),
    )
    assert (result.rerouted_cost_usd, result.rerouted_revenue_usd) == (
        Decimal("1.28014"),
        Decimal("3.12"),
    )
    assert result.rerouted_margin == gross_margin(Decimal("3.12"), Decimal("1.28014"))
    assert str(result.rerouted_margin)[:10] == "0.58969871"


def test_cheapest_picks_the_lower_cost_basis_and_switches_with_it(world) -> None:  # type: ignore[no-untyped-def]
    result = whatif_reroute(period=PERIOD, alias="reasoner", policy="cheapest")
    # mi is cheaper at both efforts; "high" on mi takes the alias's high mean (h100's)
    assert figures(result) == {
        "h100": (*ACTUAL_H100, 0, 0, 0, Decimal(0), Decimal(0)),
        "mi": (*ACTUAL_MI, 6, 240_000, 840_000, Decimal("0.33014"), Decimal("2.64")),
    }
    # mi's cost basis rises before the end of the period (output $2/M, reasoning $1/M):
    # h100 wins "high" (0.50005 vs 0.60005) but not "low" (0.07001 vs 0.03001)
    w = world
    rate_for(w.mi, output="2", reasoning="1", at=NOV - timedelta(days=1))
    switched = figures(whatif_reroute(period=PERIOD, alias="reasoner", policy="cheapest"))
    assert switched["h100"][3:6] == (2, 200_000, 800_000)
    assert switched["mi"][3:6] == (4, 40_000, 40_000)
    # the rates in force at period end, not before
    assert switched["mi"][6] == Decimal("0.12004")


def test_weighted_splits_each_group_by_the_weights(world) -> None:  # type: ignore[no-untyped-def]
    result = whatif_reroute(
        period=PERIOD, alias="reasoner", policy="weighted", weights=parse_weights("h100:1,mi:1")
    )
    assert figures(result) == {
        "h100": (*ACTUAL_H100, 3, 140_000, 500_000, Decimal("0.64007"), Decimal("1.56")),
        "mi": (*ACTUAL_MI, 3, 120_000, 420_000, Decimal("0.16507"), Decimal("1.32")),
    }
    assert result.weights == {"h100": 1, "mi": 1}
    # the targets' own weights (80/20) by default: 6 x 0.8 = 4.8 -> 5 calls, 1.2 -> 1
    default = figures(whatif_reroute(period=PERIOD, alias="reasoner", policy="weighted"))
    assert (default["h100"][3], default["mi"][3]) == (5, 1)


def test_effort_rules_that_match_the_actual_routing_change_nothing(world) -> None:  # type: ignore[no-untyped-def]
    rules = [{"name": "light", "efforts": ["low"], "target": "mi"}]
    result = whatif_reroute(period=PERIOD, alias="reasoner", policy="effort", rules=rules)
    assert figures(result) == {
        "h100": (*ACTUAL_H100, 2, 200_000, 800_000, Decimal("1.0001"), Decimal("2.4")),
        "mi": (*ACTUAL_MI, 4, 40_000, 40_000, Decimal("0.03004"), Decimal("0.24")),
    }
    assert result.rerouted_cost_usd == result.actual_cost_usd
    assert [r.name for r in result.rules] == ["light"]


def test_bad_input_is_a_clear_error(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ApplicationError, match="policy takes"):
        whatif_reroute(period=PERIOD, alias="reasoner", policy="random")
    with pytest.raises(NotFound):
        whatif_reroute(period=PERIOD, alias="nope", policy="fallback")
    with pytest.raises(ApplicationError, match="no active target of 'reasoner': zz"):
        whatif_reroute(period=PERIOD, alias="reasoner", policy="weighted", weights={"zz": 1})
    with pytest.raises(ApplicationError, match="rules: Rule 'x': target"):
        whatif_reroute(period=PERIOD, alias="reasoner", policy="effort", rules=[{"name": "x"}])
    with pytest.raises(ApplicationError, match="rules name no active target of 'reasoner': zz"):
        whatif_reroute(
            period=PERIOD,
            alias="reasoner",
            policy="effort",
            rules=[{"name": "x", "efforts": ["low"], "target": "zz"}],
        )
    with pytest.raises(ApplicationError, match="target:weight"):
        parse_weights("h100=3")
    for bad in (
        "h100:\u00b2",
        "h100:\u0663",
        "h100:１",
        "h100:-1",
        "h100:",
    ):  # ², Arabic 3, fullwidth 1
        with pytest.raises(ApplicationError, match="target:weight"):
            parse_weights(bad)
    with pytest.raises(ApplicationError, match="at most 9 digits"):
        parse_weights("h100:" + "9" * 1500)
    assert parse_weights(" h100 : 80 ,mi:0") == {"h100": 80, "mi": 0}
