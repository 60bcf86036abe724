"""Cost basis, serving cost rates, history, floors, reports and what-if, on the database."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.costs import formulas
from billing.costs.catalogue import (
    CannotPrice,
    accelerator_get,
    catalogue_load,
    cost_basis_create,
    deployment_set,
)
from billing.costs.margins import margin_policy_set
from billing.models import AcceleratorType
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_issues,
    subscription_create,
)
from billing.pricing.periods import Period
from billing.reports import margin_report, whatif
from metering.models import ServingCostRate, UsageRecord, UsageRollup
from metering.selectors import current_cost_rates
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage as record

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def h100():  # type: ignore[no-untyped-def]
    catalogue_load()
    return accelerator_get("nvidia-h100-sxm")


def deploy(accelerator, alias: str = "reasoner", at: datetime = T0):  # type: ignore[no-untyped-def]
    return deployment_set(
        alias=alias,
        accelerator=accelerator,
        effective_from=at,
        decode_tokens_per_s=Decimal(3913),
        prefill_tokens_per_s=Decimal(3913 * 3),
        utilization=Decimal("0.6"),
    )


def test_catalogue_loads_with_sources_and_refuses_unpriced_rows(h100) -> None:  # type: ignore[no-untyped-def]
    assert AcceleratorType.objects.count() == 14
    assert "mlcommons" in h100.source
    with pytest.raises(CannotPrice) as excinfo:
        deploy(accelerator_get("intel-gaudi3"))
    assert excinfo.value.extra["missing"] == ["hourly_usd"]


def test_deployment_publishes_an_exact_rate(h100) -> None:  # type: ignore[no-untyped-def]
    deploy(h100)
    rate = ServingCostRate.objects.get()
    # decode: 3.49 / (3913 x 3600 x 0.6) x 1e6 = 0.41291611... per 1M output tokens
    assert rate.output_usd == rate.reasoning_usd
    assert rate.output_usd.quantize(Decimal("0.001")) == Decimal("0.413")
    assert rate.input_usd * 3 == pytest.approx(rate.output_usd, rel=Decimal("1e-15"))
    assert rate.cache_read_usd == (rate.input_usd * Decimal("0.1")).quantize(Decimal("1e-18"))
    assert rate.source["cost_basis_version"] == 1 and rate.accelerator == h100.key


def test_catalogue_change_never_rewrites_recorded_costs_or_reports(h100) -> None:  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    deploy(h100)
    old_rate = current_cost_rates(["reasoner"])["reasoner"]
    first = record(
        key, T0 + timedelta(days=1), old_rate, output_tokens=1_000_000, reasoning_tokens=4_000_000
    )
    report_before = [(r.key, r.cost_usd) for r in margin_report(period=Period(T0, NOV))]
    # the price of an H100-hour doubles from the 10th
    cost_basis_create(
        accelerator=h100,
        effective_from=T0 + timedelta(days=10),
        mode="rented",
        hourly_usd=Decimal("6.98"),
    )
    new_rate = ServingCostRate.objects.order_by("-effective_from").first()
    assert new_rate.pk != old_rate.pk and new_rate.output_usd == pytest.approx(
        old_rate.output_usd * 2, rel=Decimal("1e-15")
    )
    stored = UsageRecord.objects.get(request_id=first["request_id"])
    assert stored.serving_cost_usd == first["serving_cost_usd"] == old_rate.output_usd * 5
    assert stored.cost_rate_id == old_rate.pk
    assert [(r.key, r.cost_usd) for r in margin_report(period=Period(T0, NOV))] == report_before


def test_record_cost_is_exact_and_rolls_up(h100) -> None:  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    deploy(h100)
    rate = current_cost_rates(["reasoner"])["reasoner"]
    rows = [
        record(
            key,
            T0 + timedelta(hours=2),
            rate,
            input_tokens=123_457,
            cached_input_tokens=99,
            output_tokens=777,
            reasoning_tokens=31_337,
        )
        for _ in range(3)
    ]
    rollup = UsageRollup.objects.get()
    assert rollup.serving_cost_usd == sum(r["serving_cost_usd"] for r in rows)
    assert rollup.reasoning_cost_usd == 3 * 31_337 * rate.reasoning_usd / 1_000_000
    assert rollup.accelerator == h100.key


def test_floor_warning_below_cost_and_none_above(h100) -> None:  # type: ignore[no-untyped-def]
    deploy(h100)
    margin_policy_set(
        accelerator=h100,
        target_margin=Decimal("0.6"),
        minimum_margin=Decimal("0.4"),
        effective_from=T0,
    )
    plan = plan_create(code="thin", name="Thin")
    # reasoning at $0.50/M is below 0.41291.. / (1 - 0.4) = 0.688..; output at $2/M is above
    cheap = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=T0,
        components=[
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("2")},
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("0.50")},
        ],
    )
    warnings = [i for i in plan_version_issues(version=cheap) if i.code == "below_cost_floor"]
    assert len(warnings) == 1
    assert (
        "reasoning on reasoner (nvidia-h100-sxm) is priced at $0.5000/M, below its floor $0.6882/M"
        in warnings[0].message
    )
    fine = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=T0,
        components=[
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("2")},
        ],
    )
    assert [i for i in plan_version_issues(version=fine) if i.code == "below_cost_floor"] == []


def test_margin_report_and_whatif(h100) -> None:  # type: ignore[no-untyped-def]
    catalogue_load()
    key = ApiKeyFactory()
    deploy(h100)
    margin_policy_set(
        accelerator=accelerator_get("amd-mi300x"),
        target_margin=Decimal("0.5"),
        minimum_margin=Decimal("0.2"),
        effective_from=T0,
    )
    plan = plan_create(code="payg", name="PAYG")
    from billing.plans import plan_version_publish

    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=T0,
            base_fee=Decimal(5),
            components=[
                {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4")},
                {
                    "token_class": "reasoning",
                    "charge_model": "per_unit",
                    "unit_price": Decimal("2"),
                },
            ],
        )
    )
    subscription_create(tenant=key.tenant, plan_version=version, starts_at=T0)
    rate = current_cost_rates(["reasoner"])["reasoner"]
    record(key, T0 + timedelta(days=3), rate, output_tokens=1_000_000, reasoning_tokens=3_000_000)
    rows = {r.key: r for r in margin_report(period=Period(T0, NOV))}
    served = rows[(str(key.tenant_id), "reasoner", h100.key)]
    assert served.revenue_usd == Decimal(4) + Decimal(6)
    assert served.cost_usd == rate.output_usd * 4  # 4M decode tokens
    assert served.reasoning_share_of_cost == Decimal("0.75")
    assert served.gross_margin == (10 - served.cost_usd) / 10
    assert rows[(str(key.tenant_id), "(fees)", "(fees)")].revenue_usd == Decimal(5)
    by_accelerator = {
        r.key: r for r in margin_report(period=Period(T0, NOV), group_by=("accelerator",))
    }
    assert by_accelerator[(h100.key,)].cost_usd == served.cost_usd

    result = whatif(period=Period(T0, NOV), accelerator_key="amd-mi300x", tenant_id=key.tenant_id)
    # MI300X per catalogue: 1.85 $/h at 2939 tok/s vs H100 3.49 at 3913: the same work costs less
    mi300x = formulas.cost_per_million(Decimal("1.85"), Decimal(2939), Decimal("0.6"))
    assert result.alternative_cost_usd == pytest.approx(mi300x * 4, rel=Decimal("1e-12"))
    assert result.alternative_cost_usd < result.actual_cost_usd
    assert result.floor_revenue_usd == formulas.floor_price(
        result.alternative_cost_usd, Decimal("0.2")
    )
    assert result.alternative_margin > result.actual_margin
