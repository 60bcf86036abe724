"""Aliases with several targets, the operator side (decision 0117): the caller context a
key loads (a plan only for 2+ active targets, each target's own cost rate, the first
target in `routes`), per-target cost rates, and effort rule validation."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from config.errors import ApplicationError, NotFound
from metering.ledger.record import Rates
from metering.models import Alias, ProviderAccount, Route, ServingCostRate, UpstreamKeyPeriod
from metering.proxy.callers import caller_context_load
from metering.routing.rules import EffortRule, parse_rules
from metering.selectors import current_cost_rates
from metering.services import (
    alias_set,
    route_provider_account_set,
    route_set,
    route_target_remove,
    serving_cost_rate_create,
    tenant_allow_routes,
    tenant_create,
    tenant_revoke_routes,
)
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


@pytest.mark.django_db
def test_an_alias_wide_rate_counts_only_for_targets_without_their_own_on_its_accelerator(
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    own = RouteFactory(alias="m", name="own")
    plain = RouteFactory(alias="m", name="plain")
    unnamed = RouteFactory(alias="m", name="unnamed", accelerator="")
    other = RouteFactory(alias="m", name="other", accelerator="amd-mi300x")  # added later
    older_own = rate_for(own, "m", "2", at=T0 - timedelta(days=1))
    legacy = rate_for(None, "m", "1")  # newer than own's, but alias-wide
    at = T0 + timedelta(hours=1)
    expected = {own.pk: older_own, plain.pk: legacy, unnamed.pk: legacy}  # other: unpriced
    ids = [own.pk, plain.pk, unnamed.pk, other.pk]
    assert current_cost_rates(ids, at=at) == expected
    routes = [own, plain, unnamed, other]
    aliases = {r.pk: r.alias_id for r in routes}
    assert current_cost_rates(ids, at=at, aliases=aliases) == expected
    with django_assert_num_queries(1):  # the routes known: the rates' query only
        accelerators = {r.pk: r.accelerator for r in routes}
        assert current_cost_rates(ids, at=at, aliases=aliases, accelerators=accelerators) == (
            expected
        )
    # The target on the other accelerator priced on its own: its rate, not the alias's.
    other_rate = rate_for(other, "m", "3", at=T0 + timedelta(minutes=1))
    assert current_cost_rates([other.pk], at=at)[other.pk] == other_rate


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


# --- services ------------------------------------------------------------------------


def sim_target(alias: str = "think", target: str | None = None, **kwargs: Any) -> Route:
    defaults: dict[str, Any] = {
        "provider": "openai",
        "base_url": "http://127.0.0.1:8100/v1",
        "upstream_model": "sim-reasoner",
    }
    return route_set(alias=alias, target=target, **{**defaults, **kwargs})


@pytest.mark.django_db
def test_route_set_without_target_writes_the_only_one_and_refuses_when_several() -> None:
    first = sim_target(accelerator="nvidia-h100-sxm")
    assert (first.name, first.alias_id, first.weight, first.priority) == (
        "default",
        "think",
        100,
        0,
    )
    assert sim_target(upstream_model="sim-reasoner-2").pk == first.pk  # idempotent on the target
    mini = sim_target(target="mini", upstream_model="sim-reasoner-mini", weight=20, priority=1)
    assert (mini.name, mini.weight, mini.priority) == ("mini", 20, 1)
    assert Route.objects.filter(alias_id="think").count() == 2
    with pytest.raises(ApplicationError, match=r"several targets \(default, mini\).*--target"):
        sim_target()
    again = sim_target(target="mini", upstream_model="sim-reasoner-mini")
    assert again.pk == mini.pk and again.weight == 20  # None leaves routing fields as they are
    # limits: 0 clears
    limited = sim_target(target="mini", max_concurrent=8, first_byte_timeout_ms=1500)
    assert (limited.max_concurrent, limited.first_byte_timeout_ms) == (8, 1500)
    cleared = sim_target(target="mini", max_concurrent=0, first_byte_timeout_ms=0)
    assert (cleared.max_concurrent, cleared.first_byte_timeout_ms) == (None, None)
    assert Alias.objects.get(name="think").max_attempts == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": -1}, "weight must be an integer from 0"),
        ({"priority": 40_000}, "priority must be an integer"),
        ({"max_concurrent": -2}, "max_concurrent must be"),
        ({"first_byte_timeout_ms": 700_000}, "first_byte_timeout_ms must be"),
        ({"target": "a b"}, "no spaces or slashes"),
        ({"target": "a/b"}, "no spaces or slashes"),
        ({"alias": "  "}, "alias must not be empty"),
    ],
)
def test_route_set_refuses_bad_routing_fields(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ApplicationError, match=message):
        sim_target(**kwargs)
    assert not Route.objects.exists()


@pytest.mark.django_db
def test_every_target_of_an_alias_speaks_one_wire_family() -> None:
    sim_target(provider="openai")
    sim_target(target="vllm", provider="openai-compatible", base_url="http://vllm:8000/v1")
    with pytest.raises(ApplicationError, match="one wire family.*not compatible with anthropic"):
        sim_target(target="claude", provider="anthropic", base_url="https://api.anthropic.com")
    assert not Route.objects.filter(name="claude").exists()
    # a lone target may change family; an inactive one does not count
    solo = sim_target(alias="solo", provider="openai")
    moved = sim_target(alias="solo", provider="anthropic", base_url="https://api.anthropic.com")
    assert moved.pk == solo.pk and moved.provider == "anthropic"


@pytest.mark.django_db
def test_route_target_remove_deactivates_never_the_last_nor_a_ruled_one() -> None:
    sim_target()
    sim_target(target="mini", priority=1)
    sim_target(target="spare", priority=2)
    alias_set(
        name="think",
        policy="effort",
        rules=[{"name": "light", "efforts": ["low"], "target": "mini"}],
    )
    with pytest.raises(ApplicationError, match="'light'.*send calls to 'mini'"):
        route_target_remove(alias="think", target="mini")
    removed = route_target_remove(alias="think", target="spare")
    assert removed.is_active is False
    assert route_target_remove(alias="think", target="spare").is_active is False  # idempotent
    alias_set(name="think", rules=[])
    route_target_remove(alias="think", target="mini")
    with pytest.raises(ApplicationError, match="last active target of 'think'"):
        route_target_remove(alias="think", target="default")
    with pytest.raises(NotFound, match="no target 'nope'"):
        route_target_remove(alias="think", target="nope")
    assert list(
        Route.objects.filter(alias_id="think", is_active=True).values_list("name", flat=True)
    ) == ["default"]
    # one active target left among three: route_set without --target writes that one
    assert sim_target(upstream_model="sim-reasoner-3").name == "default"


@pytest.mark.django_db
def test_alias_set_is_idempotent_and_validates() -> None:
    sim_target()
    sim_target(target="mini", priority=1)
    rules = [
        {"name": "light", "efforts": ["low", "minimal"], "max_input_tokens": 2000, "target": "mini"}
    ]
    alias = alias_set(name="think", policy="effort", rules=rules, max_attempts=3)
    assert (alias.policy, alias.max_attempts) == ("effort", 3)
    assert alias.rules == [
        {"name": "light", "efforts": ["low", "minimal"], "max_input_tokens": 2000, "target": "mini"}
    ]
    updated_at = alias.updated_at
    same = alias_set(name="think", policy="effort", rules=rules, max_attempts=3)
    assert same.updated_at == updated_at  # nothing changed, nothing written
    assert alias_set(name="think").rules == alias.rules  # None leaves fields as they are
    with pytest.raises(ApplicationError, match="Invalid rules: Rule 'x': unknown effort"):
        alias_set(name="think", rules=[{"name": "x", "efforts": ["huge"], "target": "mini"}])
    with pytest.raises(ApplicationError, match="no active target by"):
        alias_set(name="think", rules=[{"name": "x", "target": "ghost"}])
    with pytest.raises(ApplicationError, match="effort policy only"):
        alias_set(name="think", policy="weighted")
    with pytest.raises(ApplicationError, match="max_attempts must be an integer from 1 to 4"):
        alias_set(name="think", max_attempts=5)
    with pytest.raises(ApplicationError, match="policy must be one of"):
        alias_set(name="think", policy="random")
    weighted = alias_set(name="think", policy="weighted", rules=[])
    assert (weighted.policy, weighted.rules) == ("weighted", [])
    assert alias_set(name="think", is_active=False).is_active is False
    assert Alias.objects.get(name="think").rules == []


@pytest.mark.django_db
def test_grants_are_per_alias_and_reach_every_target() -> None:
    tenant = tenant_create(name="acme")
    sim_target()
    sim_target(target="mini")
    tenant_allow_routes(tenant=tenant, aliases=["think"])
    tenant_allow_routes(tenant=tenant, aliases=["think"])  # idempotent
    assert list(tenant.allowed_aliases.values_list("name", flat=True)) == ["think"]
    with pytest.raises(NotFound, match="ghost"):
        tenant_allow_routes(tenant=tenant, aliases=["ghost"])
    tenant_revoke_routes(tenant=tenant, aliases=["think"])
    assert not tenant.allowed_aliases.exists()


@pytest.mark.django_db
def test_key_history_is_kept_per_target() -> None:
    account = ProviderAccount.objects.create(name="oa", provider="openai")
    sim_target(provider_account="oa", upstream_key_id="key_a")
    mini = sim_target(target="mini", provider_account="oa", upstream_key_id="key_b")
    route_provider_account_set(
        alias="think", target="mini", provider_account=None, upstream_key_id="key_c"
    )
    periods = UpstreamKeyPeriod.objects.filter(route=mini).order_by("id")
    assert [(p.provider_account_id, p.upstream_key_id, p.valid_until is None) for p in periods] == [
        (account.pk, "key_b", False),
        (account.pk, "key_c", True),
    ]
    default = Route.objects.get(alias_id="think", name="default")
    assert list(
        UpstreamKeyPeriod.objects.filter(route=default).values_list("upstream_key_id", flat=True)
    ) == ["key_a"]
    with pytest.raises(ApplicationError, match="several targets"):
        route_provider_account_set(alias="think", provider_account=None, upstream_key_id="key_z")


# --- commands ------------------------------------------------------------------------


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue().strip()


SIM = ["--provider", "openai", "--base-url", "http://127.0.0.1:8100/v1", "--upstream-model"]


@pytest.mark.django_db
def test_operator_commands_build_a_multi_target_alias(tmp_path: Path) -> None:
    tenant_create(name="acme")
    out, _ = run("route_set", "think", *SIM, "sim-reasoner", "--allow-tenant", "acme")
    assert out == "think -> openai http://127.0.0.1:8100/v1 sim-reasoner"
    out, _ = run(
        "route_set", "think", *SIM, "sim-reasoner-mini", "--target", "mini",
        "--weight", "20", "--priority", "1", "--max-concurrent", "16",
        "--first-byte-timeout-ms", "2000",
    )  # fmt: skip
    assert out == (
        "think/mini -> openai http://127.0.0.1:8100/v1 sim-reasoner-mini "
        "(priority 1, weight 20, max concurrent 16, first byte within 2000 ms)"
    )
    out, _ = run("route_set", "think", "--target", "mini", "--weight", "30")
    assert (
        out
        == "think/mini: routing (priority 1, weight 30, max concurrent 16, first byte within 2000 ms)"
    )
    with pytest.raises(CommandError, match="several targets"):
        run("route_set", "think", *SIM, "sim-reasoner")

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "light", "efforts": ["low"], "target": "mini"}]))
    out, err = run(
        "alias_set",
        "think",
        "--policy",
        "effort",
        "--rules-file",
        str(rules),
        "--max-attempts",
        "3",
    )
    assert out.splitlines() == [
        "think: policy effort, max attempts 3, 1 rule(s), active",
        "  default: priority 0, weight 100, openai sim-reasoner",
        "  mini: priority 1, weight 30, openai sim-reasoner-mini",
        "  rule light: low -> mini",
    ]
    assert err == ""
    with pytest.raises(CommandError, match="send calls to 'mini'"):
        run("route_target_remove", "think", "mini")
    out, _ = run(
        "alias_set", "think", "--policy", "fallback", "--rules-file", str(_json(tmp_path, []))
    )
    assert out.startswith("think: policy fallback, max attempts 3, active")
    assert run("route_target_remove", "think", "mini")[0] == "think/mini: inactive"
    with pytest.raises(CommandError, match="last active target"):
        run("route_target_remove", "think", "default")
    out, err = run("alias_set", "think", "--inactive")
    assert (
        "inactive" in out.splitlines()[0]
        and "  mini: priority 1, weight 30, openai sim-reasoner-mini [inactive]" in out
    )
    assert "model_not_found" in err
    out, _ = run("tenant_grant", "acme", "think", "--revoke")
    assert out == "acme may call: (nothing)"
    assert run("tenant_grant", "acme", "think")[0] == "acme may call: think"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alias_set", "x", "--rules-file", "/nonexistent/rules.json"], "Cannot read"),
        (["alias_set", "x", "--max-attempts", "0"], "max_attempts must be"),
        (["route_target_remove", "ghost", "t"], "no target 't'"),
        (["tenant_grant", "nobody", "x"], "No tenant"),
        (["route_set", "x", "--weight", "5"], "No route 'x'"),
        (["route_set", "x", *SIM, "m", "--target", "a b"], "no spaces"),
    ],
)
def test_operator_commands_refuse_bad_input_without_a_traceback(
    args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)


@pytest.mark.django_db
def test_alias_set_refuses_a_rules_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text("[{")
    with pytest.raises(CommandError, match="is not valid JSON"):
        run("alias_set", "x", "--rules-file", str(bad))
    assert not Alias.objects.filter(name="x").exists()


def _json(tmp_path: Path, value: Any) -> Path:
    path = tmp_path / "value.json"
    path.write_text(json.dumps(value))
    return path


@pytest.mark.django_db
def test_commands_warn_about_doubtful_routing() -> None:
    run("route_set", "think", *SIM, "sim-reasoner")
    _, err = run("alias_set", "think", "--policy", "effort")
    assert err == ""  # one target, no rules: every call goes to it
    run("route_set", "think", *SIM, "sim-reasoner-mini", "--target", "mini")
    _, err = run("alias_set", "think", "--max-attempts", "1")
    assert "several targets but max_attempts 1: no failover" in err
    _, err = run("route_set", "think", "--target", "mini", "--weight", "0")
    assert "no failover" in err
    run("alias_set", "think", "--policy", "weighted", "--max-attempts", "2")
    _, err = run("route_set", "think", "--target", "default", "--weight", "0")
    assert "Every target of 'think' has weight 0." in err
