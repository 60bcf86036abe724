"""Deployments and serving cost rates per target of an alias (decision 0117): a deployment
names the target it serves, its rate is published for that target, a cost basis change
republishes every target on that accelerator, and plan floors must clear the dearest
target."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.costs.catalogue import (
    accelerator_get,
    catalogue_load,
    cost_basis_create,
    deployment_in_force,
    deployment_set,
)
from billing.costs.margins import margin_policy_set
from billing.plans import plan_create, plan_version_create, plan_version_issues
from config.errors import ApplicationError, NotFound
from metering.models import Route, ServingCostRate
from metering.selectors import current_cost_rates
from metering.services import route_set

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def accelerators():  # type: ignore[no-untyped-def]
    catalogue_load()
    return accelerator_get("nvidia-h100-sxm"), accelerator_get("amd-mi300x")


def target(name: str | None, model: str = "sim-reasoner") -> Route:
    return route_set(
        alias="think",
        target=name,
        provider="openai",
        base_url="http://127.0.0.1:8100/v1",
        upstream_model=model,
    )


def deploy(accelerator, target_name: str | None, decode: int, at: datetime = T0):  # type: ignore[no-untyped-def]
    return deployment_set(
        alias="think",
        target=target_name,
        accelerator=accelerator,
        effective_from=at,
        decode_tokens_per_s=Decimal(decode),
        prefill_tokens_per_s=Decimal(decode * 3),
        utilization=Decimal("0.6"),
    )


def test_deployments_and_rates_are_per_target(accelerators) -> None:  # type: ignore[no-untyped-def]
    h100, mi300 = accelerators
    first = target(None)
    deploy(h100, None, 3913)  # the alias's only target
    fast = target("fast", "sim-reasoner-2")
    with pytest.raises(ApplicationError, match="several targets"):
        deploy(h100, None, 3913)
    deploy(mi300, "fast", 2 * 3913)
    with pytest.raises(NotFound, match="no target 'ghost'"):
        deploy(h100, "ghost", 1)

    at = T0 + timedelta(hours=1)
    rates = current_cost_rates([first.pk, fast.pk], at=at)
    assert (rates[first.pk].route_id, rates[first.pk].accelerator) == (first.pk, h100.key)
    assert (rates[fast.pk].route_id, rates[fast.pk].accelerator) == (fast.pk, mi300.key)
    assert deployment_in_force(alias="think", at=at, route=first).accelerator == h100  # type: ignore[union-attr]
    assert deployment_in_force(alias="think", at=at, route=fast).accelerator == mi300  # type: ignore[union-attr]
    assert deployment_in_force(alias="think", at=at, route=None) is None

    # the H100 hour doubles: only the H100 target's rate moves
    later = T0 + timedelta(days=2)
    before_fast = rates[fast.pk]
    cost_basis_create(
        accelerator=h100, effective_from=later, mode="rented", hourly_usd=Decimal("6.98")
    )
    after = current_cost_rates([first.pk, fast.pk], at=later)
    assert after[fast.pk] == before_fast
    assert after[first.pk].output_usd == pytest.approx(
        rates[first.pk].output_usd * 2, rel=Decimal("1e-15")
    )
    assert ServingCostRate.objects.filter(route=first).count() == 2


def test_floor_breaches_check_every_active_target(accelerators) -> None:  # type: ignore[no-untyped-def]
    h100, mi300 = accelerators
    target(None)
    target("slow", "sim-reasoner-2")
    deploy(h100, "default", 3913)
    deploy(h100, "slow", 3913 // 4)  # four times the cost per token
    margin_policy_set(
        accelerator=h100,
        target_margin=Decimal("0.5"),
        minimum_margin=Decimal("0"),
        effective_from=T0,
    )
    plan = plan_create(code="p", name="P")
    # $1/M output clears the default target (~$0.41/M) but not the slow one (~$1.65/M)
    version = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=T0,
        components=[
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("1")},
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("5")},
        ],
    )
    issues = [i for i in plan_version_issues(version=version) if i.code == "below_cost_floor"]
    assert [i.message.split(" is priced")[0] for i in issues] == [
        "output on think/slow (nvidia-h100-sxm)"
    ]
    # once the slow target is out of service, the plan clears every target
    Route.objects.filter(name="slow").update(is_active=False)
    assert [i for i in plan_version_issues(version=version) if i.code == "below_cost_floor"] == []


def test_deployment_set_command_publishes_for_a_target(accelerators) -> None:  # type: ignore[no-untyped-def]
    target(None)
    target("mi300")
    out = StringIO()
    call_command(
        "deployment_set", "think", "--target", "mi300", "--accelerator", "amd-mi300x",
        "--decode-tokens-per-s", "5000", "--prefill-tokens-per-s", "15000",
        "--effective-from", "2026-10-01T00:00:00Z", stdout=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[0] == "deployment think/mi300 v1 on amd-mi300x from 2026-10-01 00:00 UTC"
    rate = ServingCostRate.objects.get()
    assert rate.route.name == "mi300" and lines[1].startswith(
        f"serving cost rate #{rate.pk} published"
    )
    for args, message in [
        (["think"], "several targets"),
        (["think", "--target", "ghost"], "no target 'ghost'"),
        (["think", "--target", "mi300", "--utilization", "2"], "utilization"),
        (["think", "--target", "mi300", "--effective-from", "2026-10-01"], "time zone"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command(
                "deployment_set", *args, "--accelerator", "amd-mi300x",
                "--decode-tokens-per-s", "5000", "--prefill-tokens-per-s", "15000", stdout=StringIO(),
            )  # fmt: skip
