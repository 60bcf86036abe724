"""margin_report's `target` grouping: rows per target from the rollups' route_id, revenue
split by tokens as across accelerators, route 0 as "(before routing)"."""

from decimal import Decimal

import pytest

from billing.pricing.periods import Period
from billing.reports import BEFORE_ROUTING, FEES, margin_report
from tests.api.test_margin_provider_costs import resold  # noqa: F401  (a fixture)
from tests.billing.routed_world import NOV, T0, routed_world

pytestmark = pytest.mark.django_db


def test_margin_by_alias_and_target() -> None:
    routed_world()
    rows = {r.key: r for r in margin_report(period=Period(T0, NOV), group_by=("alias", "target"))}
    assert set(rows) == {
        ("reasoner", "reasoner/h100"),
        ("reasoner", "reasoner/mi"),
        ("reasoner", BEFORE_ROUTING),
        (FEES, FEES),
    }
    h100, mi = rows[("reasoner", "reasoner/h100")], rows[("reasoner", "reasoner/mi")]
    before = rows[("reasoner", BEFORE_ROUTING)]
    assert (h100.revenue_usd, h100.cost_usd, h100.gross_margin) == (
        Decimal(8),
        Decimal(3),
        Decimal("0.625"),
    )
    assert (mi.revenue_usd, mi.cost_usd, mi.gross_margin) == (
        Decimal(14),
        Decimal("1.75"),
        Decimal("0.875"),
    )
    assert (before.revenue_usd, before.cost_usd) == (Decimal(4), Decimal(1))
    assert rows[(FEES, FEES)].revenue_usd == Decimal(5)
    assert dict(h100.revenue_by_class) == {"output": Decimal(4), "reasoning": Decimal(4)}
    assert dict(mi.revenue_by_class) == {"output": Decimal(12), "reasoning": Decimal(2)}
    assert dict(mi.tokens)["reasoning"] == 1_000_000
    assert h100.reasoning_cost_usd == Decimal(2)


def test_target_alone_and_the_other_groupings_are_unchanged() -> None:
    routed_world()
    period = Period(T0, NOV)
    by_target = {r.key: r.revenue_usd for r in margin_report(period=period, group_by=("target",))}
    assert by_target == {
        ("reasoner/h100",): Decimal(8),
        ("reasoner/mi",): Decimal(14),
        (BEFORE_ROUTING,): Decimal(4),
        (FEES,): Decimal(5),
    }
    by_accelerator = {
        r.key: (r.revenue_usd, r.cost_usd)
        for r in margin_report(period=period, group_by=("accelerator",))
    }
    assert by_accelerator == {
        ("nvidia-h100-sxm",): (Decimal(12), Decimal(4)),
        ("amd-mi300x",): (Decimal(14), Decimal("1.75")),
        (FEES,): (Decimal(5), Decimal(0)),
    }
    (alias_row,) = [
        r for r in margin_report(period=period, group_by=("alias",)) if r.key != (FEES,)
    ]
    assert (alias_row.revenue_usd, alias_row.cost_usd) == (Decimal(26), Decimal("5.75"))


def test_resold_usage_before_routing_keeps_its_provider_cost(resold) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Grouped by target, a payer's actual provider cost goes to its targets on the
    account; usage with no target (folded before routing) keeps it under route 0."""
    key_a, _ = resold
    a = str(key_a.tenant_id)
    rows = {
        r.key: r
        for r in margin_report(period=Period(T0, NOV), group_by=("tenant", "alias", "target"))
    }
    mine = rows[(a, "mini", BEFORE_ROUTING)]
    assert (mine.cost_usd, mine.provider_cost_usd) == (Decimal(5), Decimal("5.25"))
    assert mine.provider_cost_difference_usd == Decimal("0.25")
    unattributed = rows[
        ("(unattributed)", "(unattributed) openai-main", "(unattributed) openai-main")
    ]
    assert unattributed.provider_cost_usd == Decimal(2)


def test_provider_cost_splits_across_a_payers_targets_on_the_account() -> None:
    """Two targets of "mini" on one provider account: the tenant's actual cost (20, all
    attributed: the day matched) splits 1:3 by their tokens, as does the estimate (16)."""
    from billing.plans import (
        plan_create,
        plan_version_create,
        plan_version_publish,
        subscription_create,
    )
    from metering.models import ProviderAccount
    from tests.api.test_margin_provider_costs import DAY, M, at, cost, rate, recon
    from tests.factories import ApiKeyFactory, RouteFactory
    from tests.usage_helpers import write_usage

    account = ProviderAccount.objects.create(
        name="openai-main", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    x = RouteFactory(alias="mini", name="x", provider_account=account, accelerator="")
    y = RouteFactory(alias="mini", name="y", provider_account=account, accelerator="")
    mini = rate("mini", "", output_usd="4")  # alias-wide (published before routing)
    key = ApiKeyFactory()
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="p", name="P"),
            currency="USD",
            effective_from=T0,
            components=[{"token_class": "output", "charge_model": "per_unit", "unit_price": "5"}],
        )
    )
    subscription_create(tenant=key.tenant, plan_version=version, starts_at=T0)
    via = {"alias": "mini", "upstream_model": "o4-mini", "provider_account_id": account.pk}
    write_usage(key, at(DAY), mini, output_tokens=M, route_id=x.pk, **via)  # type: ignore[arg-type]
    write_usage(key, at(DAY), mini, output_tokens=3 * M, route_id=y.pk, **via)  # type: ignore[arg-type]
    recon(account, DAY, "output", 4 * M, 4 * M, "matched")
    cost(account, DAY, "o4-mini, output", "20.00")
    rows = {r.key: r for r in margin_report(period=Period(T0, NOV), group_by=("target",))}
    on_x, on_y = rows[("mini/x",)], rows[("mini/y",)]
    assert (on_x.revenue_usd, on_x.cost_usd, on_x.provider_cost_usd) == (
        Decimal(5),
        Decimal(4),
        Decimal(5),
    )
    assert (on_y.revenue_usd, on_y.cost_usd, on_y.provider_cost_usd) == (
        Decimal(15),
        Decimal(12),
        Decimal(15),
    )
    assert (on_x.provider_cost_difference_usd, on_y.provider_cost_difference_usd) == (
        Decimal(1),
        Decimal(3),
    )
    # the same total as without the target grouping
    by_alias = {r.key: r for r in margin_report(period=Period(T0, NOV), group_by=("alias",))}
    assert by_alias[("mini",)].provider_cost_usd == Decimal(20)
