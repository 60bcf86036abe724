"""The one list of budgets a call counts against (metering.control.budgets): the proxy's
view of a key and billing's view of the whole tenant come from the same list, in the same
order, and the Redis names it gives read back to the same ledger figures."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.control.budgets import (
    BudgetKind,
    budget_list,
    budget_loader,
    budget_scopes,
    budget_specs,
    budget_tenant_ids,
)
from metering.control.scopes import to_nano
from metering.control.terms import BalanceTerms, TenantTerms
from metering.models import ReasoningPolicy, SpendLimit
from tests.factories import ApiKeyFactory, TenantFactory

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)

pytestmark = pytest.mark.django_db


def setup_budgets():  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    other = ApiKeyFactory(tenant=key.tenant)
    tenant = key.tenant
    tenant_limit = SpendLimit.objects.create(tenant=tenant, window="month", amount_usd="10")
    key_limit = SpendLimit.objects.create(
        tenant=tenant, api_key=key, window="total", amount_usd="5"
    )
    other_limit = SpendLimit.objects.create(
        tenant=tenant, api_key=other, window="month", amount_usd="3"
    )
    ReasoningPolicy.objects.create(api_key=key, monthly_reasoning_tokens=200, mode="refuse")
    ReasoningPolicy.objects.create(api_key=other, monthly_reasoning_tokens=100)
    return key, other, (tenant_limit, key_limit, other_limit)


def test_a_keys_budgets_are_the_tenants_and_its_own_in_the_fixed_order() -> None:
    key, _, (tenant_limit, key_limit, _) = setup_budgets()
    specs = budget_list(
        tenant_id=key.tenant_id,
        api_key_id=key.pk,
        balance=True,
        plan_reasoning_tokens=1000,
    )
    assert [(s.kind, s.api_key_id) for s in specs] == [
        ("spend", None),
        ("spend", key.pk),
        ("balance", None),
        ("reasoning", None),
        ("reasoning", key.pk),
    ]
    assert [s.spend_limit_id for s in specs[:2]] == [tenant_limit.pk, key_limit.pk]
    assert specs[0].monthly and not specs[1].monthly
    assert specs[4].refuse and specs[4].limit == Decimal(200)
    assert specs[4].key_prefix == key.prefix


def test_the_tenants_budgets_cover_every_key() -> None:
    key, other, _ = setup_budgets()
    specs = budget_list(
        tenant_id=key.tenant_id, api_key_id=None, balance=False, plan_reasoning_tokens=None
    )
    assert [(s.kind, s.api_key_id) for s in specs] == [
        ("spend", None),
        ("spend", key.pk),
        ("spend", other.pk),
        ("reasoning", key.pk),
        ("reasoning", other.pk),
    ]


def test_scopes_name_each_budget_and_load_it_back_from_the_ledger() -> None:
    key, _, _ = setup_budgets()
    terms = TenantTerms(
        spend_rates={},
        monthly_reasoning_tokens=1000,
        balance=BalanceTerms(available=Decimal("7.5"), epoch="e1", load_used=lambda: Decimal(1)),
        alert_thresholds=(90,),
    )
    specs = budget_list(
        tenant_id=key.tenant_id,
        api_key_id=key.pk,
        balance=True,
        plan_reasoning_tokens=terms.monthly_reasoning_tokens,
    )
    scopes = budget_scopes(specs, tenant_id=key.tenant_id, tenant_terms=terms, now=NOW)
    assert [s.key for s in scopes] == [
        f"rk:{{{key.tenant_id}}}:spend:tenant:{key.tenant_id}:2026-11",
        f"rk:{{{key.tenant_id}}}:spend:key:{key.pk}:total",
        f"rk:{{{key.tenant_id}}}:balance:{key.tenant_id}:e1",
        f"rk:{{{key.tenant_id}}}:reasoning:tenant:{key.tenant_id}:2026-11",
        f"rk:{{{key.tenant_id}}}:reasoning:key:{key.pk}:2026-11",
    ]
    assert [s.label for s in scopes] == [
        "tenant monthly spend limit",
        "key all-time spend limit",
        "prepaid balance",
        "plan monthly reasoning-token budget",
        "key monthly reasoning-token budget",
    ]
    assert [s.limit for s in scopes] == [
        to_nano(Decimal(10)),
        to_nano(Decimal(5)),
        7_500_000_000,
        1000,
        200,
    ]
    assert all(s.alert_at == (90,) for s in scopes)
    assert scopes[2].load_used() == to_nano(Decimal(1))
    for scope in scopes:  # nothing used yet: the ledger reads 0 for every named budget
        if scope.kind != "balance":
            loader = budget_loader(scope.key)
            assert loader is not None and loader() == scope.load_used() == 0


def test_every_kind_is_named_and_owned() -> None:
    key, _, _ = setup_budgets()
    specs = budget_list(
        tenant_id=key.tenant_id, api_key_id=key.pk, balance=True, plan_reasoning_tokens=1000
    )
    assert all(isinstance(s.kind, BudgetKind) for s in specs)
    assert {s.kind for s in specs} == set(BudgetKind)
    assert [s.owner for s in specs] == ["tenant", "key", "tenant", "plan", "key"]


def test_names_not_of_a_budget_kind_or_shape_read_back_as_nothing() -> None:
    key, _, _ = setup_budgets()
    tenant = key.tenant_id
    for name in (
        f"rk:{{{tenant}}}:credit:tenant:{tenant}:2026-11",  # no such kind
        f"rk:{{{tenant}}}:reasoning:tenant:{tenant}:total",  # a reasoning budget is monthly
        f"rk:{{{tenant}}}:spend:team:{tenant}:2026-11",  # no such owner
        f"rk:{{{tenant}}}:spend:tenant:{tenant}",  # too short
        f"rk:{{{tenant}}}:balance:{tenant}:e1:extra",  # too long
        f"xx:{{{tenant}}}:spend:tenant:{tenant}:2026-11",  # not ours
        f"rk:{{nope}}:spend:tenant:{tenant}:total",  # a tag that is no tenant
        f"rk:spend:tenant:{tenant}:total",  # the name before the hash tag
        "rk",
    ):
        assert budget_loader(name) is None, name
    assert budget_loader(f"rk:{{{tenant}}}:spend:tenant:{tenant}:total") is not None


def test_the_tenants_metering_knows_to_have_budgets() -> None:
    key, _, _ = setup_budgets()  # spend limits and key reasoning budgets
    only_limit = SpendLimit.objects.create(
        tenant=TenantFactory(), window="total", amount_usd="1"
    ).tenant_id
    only_policy = ApiKeyFactory()
    ReasoningPolicy.objects.create(api_key=only_policy, monthly_reasoning_tokens=5)
    no_budget = ApiKeyFactory()  # a policy without a monthly budget is no budget
    ReasoningPolicy.objects.create(api_key=no_budget, max_output_tokens=100)

    assert budget_tenant_ids() == {key.tenant_id, only_limit, only_policy.tenant_id}


def test_budget_specs_keep_one_order_whatever_order_the_rows_come_in() -> None:
    """The proxy's caller loader and budget_list give budget_specs their rows from
    different queries; the budgets come out in the one fixed order either way."""
    spend = [
        (9, 4, False, Decimal("5"), "rk_b"),
        (2, None, True, Decimal("100"), ""),
        (5, 4, True, Decimal("20"), "rk_b"),
    ]
    reasoning = [(7, 900, True, "rk_c"), (4, 500, False, "rk_b")]
    specs = budget_specs(
        spend_limits=spend,
        balance=True,
        plan_reasoning_tokens=10_000,
        plan_refuses=True,
        key_reasoning=reasoning,
    )
    again = budget_specs(
        spend_limits=list(reversed(spend)),
        balance=True,
        plan_reasoning_tokens=10_000,
        plan_refuses=True,
        key_reasoning=list(reversed(reasoning)),
    )
    assert specs == again
    assert [(s.kind, s.spend_limit_id, s.api_key_id, s.limit) for s in specs] == [
        (BudgetKind.SPEND, 2, None, Decimal("100")),
        (BudgetKind.SPEND, 5, 4, Decimal("20")),
        (BudgetKind.SPEND, 9, 4, Decimal("5")),
        (BudgetKind.BALANCE, None, None, None),
        (BudgetKind.REASONING, None, None, Decimal("10000")),
        (BudgetKind.REASONING, None, 4, Decimal("500")),
        (BudgetKind.REASONING, None, 7, Decimal("900")),
    ]
    assert [s.key_prefix for s in specs] == ["", "rk_b", "rk_b", "", "", "rk_b", "rk_c"]
    assert [s.refuse for s in specs if s.kind == BudgetKind.REASONING] == [True, False, True]
