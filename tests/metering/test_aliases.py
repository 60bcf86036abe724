"""Aliases with several targets, the operator side (decision 0117): the caller context a
key loads (a plan only for 2+ active targets, each target's own cost rate, the first
target in `routes`), per-target cost rates, and effort rule validation."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.ledger.record import Rates
from metering.models import Alias, Route, ServingCostRate
from metering.proxy.callers import caller_context_load
from metering.routing.rules import EffortRule, parse_rules
from metering.selectors import current_cost_rates
from metering.services import serving_cost_rate_create
from tests.factories import ApiKeyFactory, RouteFactory

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def rates(output: str) -> Rates:
    value = Decimal(output)
    return Rates(
        input=value / 4, cache_read=value / 40, cache_write=value / 2, output=value, reasoning=value
    )


def rate_for(route: Route | None, alias: str, output: str, at: datetime = T0) -> ServingCostRate:
    return serving_cost_rate_create(
        alias=alias,
        accelerator="nvidia-h100-sxm",
        effective_from=at,
        rates=rates(output),
        source={},
        route_id=None if route is None else route.pk,
    )


# --- caller context ------------------------------------------------------------------
# (a load closes stale connections first, so these run outside a test transaction)


@pytest.mark.django_db(transaction=True)
def test_caller_context_plans_only_multi_target_aliases_with_per_target_rates() -> None:
    key = ApiKeyFactory()
    single = RouteFactory(alias="solo", name="default")
    h100 = RouteFactory(alias="multi", name="h100", priority=1, weight=80, max_concurrent=64)
    mi300 = RouteFactory(
        alias="multi",
        name="mi300",
        priority=0,
        weight=20,
        accelerator="amd-mi300x",
        first_byte_timeout_ms=2500,
    )
    RouteFactory(alias="multi", name="old", priority=-5, is_active=False)
    Alias.objects.filter(name="multi").update(policy=Alias.Policy.WEIGHTED, max_attempts=3)
    key.tenant.allowed_aliases.add(*Alias.objects.filter(name__in=["solo", "multi"]))
    rate_h100 = rate_for(h100, "multi", "0.4")
    rate_mi300 = rate_for(mi300, "multi", "0.3")
    rate_solo = rate_for(None, "solo", "0.5")  # published before routing: no route

    ctx = caller_context_load(key.key_hash)

    assert ctx is not None
    assert set(ctx.routes) == {"solo", "multi"}
    assert set(ctx.plans) == {"multi"}
    plan = ctx.plans["multi"]
    assert plan.policy == "weighted" and plan.max_attempts == 3
    assert plan.alias == "multi" and plan.alias_pk == Alias.objects.get(name="multi").pk
    assert [t.target for t in plan.targets] == ["mi300", "h100"]  # by priority, inactive out
    assert [t.route_id for t in plan.targets] == [mi300.pk, h100.pk]
    assert [t.weight for t in plan.targets] == [20, 80]
    assert [t.max_concurrent for t in plan.targets] == [None, 64]
    assert [t.first_byte_timeout_s for t in plan.targets] == [2.5, None]
    assert [t.cost_rate_id for t in plan.targets] == [rate_mi300.pk, rate_h100.pk]
    assert plan.targets[0].cost_rates is not None
    assert plan.targets[0].cost_rates.output == Decimal("0.3")
    assert ctx.routes["multi"] == plan.targets[0]  # the first target stays in routes
    assert ctx.routes["multi"].accelerator == "amd-mi300x"
    solo = ctx.routes["solo"]
    assert solo.route_id == single.pk and solo.target == "default"
    assert solo.cost_rate_id == rate_solo.pk  # an alias-wide rate counts for its target


@pytest.mark.django_db(transaction=True)
def test_caller_context_skips_inactive_aliases_and_ungranted_ones() -> None:
    key = ApiKeyFactory()
    RouteFactory(alias="on", name="default")
    RouteFactory(alias="off", name="default")
    RouteFactory(alias="other", name="default")
    Alias.objects.filter(name="off").update(is_active=False)
    key.tenant.allowed_aliases.add(*Alias.objects.filter(name__in=["on", "off"]))
    ctx = caller_context_load(key.key_hash)
    assert ctx is not None
    assert set(ctx.routes) == {"on"} and ctx.plans == {}


@pytest.mark.django_db(transaction=True)
def test_caller_context_parses_effort_rules_and_survives_bad_stored_ones() -> None:
    key = ApiKeyFactory()
    RouteFactory(alias="think", name="default")
    RouteFactory(alias="think", name="mini", priority=1)
    Alias.objects.filter(name="think").update(
        policy=Alias.Policy.EFFORT,
        rules=[{"name": "light", "efforts": ["low", "minimal"], "target": "mini"}],
    )
    key.tenant.allowed_aliases.add(Alias.objects.get(name="think"))
    plan = caller_context_load(key.key_hash).plans["think"]  # type: ignore[union-attr]
    assert plan.rules == (
        EffortRule(
            name="light",
            efforts=frozenset({"low", "minimal"}),
            max_input_tokens=None,
            target="mini",
        ),
    )
    Alias.objects.filter(name="think").update(rules=[{"name": "x", "bogus": 1, "target": "mini"}])
    assert caller_context_load(key.key_hash).plans["think"].rules == ()  # type: ignore[union-attr]


@pytest.mark.django_db(transaction=True)
def test_caller_context_load_queries_do_not_grow_with_targets(
    django_assert_max_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    key = ApiKeyFactory()
    for alias in ("a", "b"):
        for n in range(4):
            route = RouteFactory(alias=alias, name=f"t{n}", priority=n)
            rate_for(route, alias, "0.1")
    key.tenant.allowed_aliases.add(*Alias.objects.all())
    with django_assert_max_num_queries(12) as captured:
        ctx = caller_context_load(key.key_hash)
    assert ctx is not None and len(ctx.plans["a"].targets) == 4
    assert sum("metering_servingcostrate" in q["sql"] for q in captured.captured_queries) == 1
    assert sum('FROM "metering_route"' in q["sql"] for q in captured.captured_queries) == 1


# --- per-target cost rates -----------------------------------------------------------


@pytest.mark.django_db
def test_current_cost_rates_per_target_latest_in_force_and_alias_wide_fallback() -> None:
    a = RouteFactory(alias="m", name="a")
    b = RouteFactory(alias="m", name="b")
    legacy = rate_for(None, "m", "1")
    a1 = rate_for(a, "m", "2", at=T0 + timedelta(days=1))
    a2 = rate_for(a, "m", "3", at=T0 + timedelta(days=3))
    assert current_cost_rates([a.pk, b.pk], at=T0 + timedelta(hours=1)) == {
        a.pk: legacy,
        b.pk: legacy,
    }
    assert current_cost_rates([a.pk, b.pk], at=T0 + timedelta(days=2)) == {a.pk: a1, b.pk: legacy}
    assert current_cost_rates([a.pk], at=T0 + timedelta(days=4)) == {a.pk: a2}
    assert current_cost_rates([b.pk], at=T0 - timedelta(days=1)) == {}
    assert current_cost_rates([]) == {}


# --- effort rules (pure) -------------------------------------------------------------


def test_parse_rules_accepts_the_documented_form() -> None:
    rules = parse_rules(
        [
            {
                "name": "light",
                "efforts": ["minimal", "LOW"],
                "max_input_tokens": 2000,
                "target": "mini",
            },
            {"name": "none", "efforts": ["none", ""], "target": "mini"},
            {"name": "heavy", "target": "default"},
        ]
    )
    assert rules == (
        EffortRule("light", frozenset({"minimal", "low"}), 2000, "mini"),
        EffortRule("none", frozenset({""}), None, "mini"),
        EffortRule("heavy", frozenset(), None, "default"),
    )
    assert rules[0].matches("low", 2000) and not rules[0].matches("low", 2001)
    assert not rules[0].matches("high", 10) and rules[2].matches("high", 10**9)
    assert parse_rules([]) == () and parse_rules(None) == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x"}, "must be a JSON list"),
        (["x"], "Rule 1: must be an object"),
        ([{"name": "x", "target": "t", "when": 1}], "unknown key(s) 'when'"),
        ([{"target": "t"}], "Rule 1: name must be a non-empty string"),
        ([{"name": "x"}], "Rule 'x': target must be a non-empty string"),
        ([{"name": "x", "target": "t", "efforts": ["extreme"]}], "unknown effort(s) 'extreme'"),
        ([{"name": "x", "target": "t", "efforts": "low"}], "efforts must be a list"),
        ([{"name": "x", "target": "t", "max_input_tokens": 0}], "positive integer"),
        ([{"name": "x", "target": "t", "max_input_tokens": True}], "positive integer"),
        ([{"name": "x", "target": "t", "max_input_tokens": 1.5}], "positive integer"),
        ([{"name": "x", "target": "t"}, {"name": "x", "target": "u"}], "used twice"),
    ],
)
def test_parse_rules_refuses_bad_input_with_a_clear_message(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=None) as excinfo:
        parse_rules(raw)
    assert message in str(excinfo.value)
