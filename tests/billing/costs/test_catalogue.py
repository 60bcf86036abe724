"""The accelerator catalogue file, and on the database: cost basis, serving cost rates,
history, floors, reports and what-if."""

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from billing.costs import formulas
from billing.costs.catalogue import (
    CannotPrice,
    CatalogueRow,
    accelerator_get,
    catalogue_csv_read,
    catalogue_load,
    cost_basis_create,
    deployment_set,
)
from billing.costs.margins import floor_price, margin_policy_set
from billing.models import AcceleratorType
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_issues,
)
from billing.pricing.periods import Period
from billing.reports import margin_report, whatif
from metering.models import ServingCostRate, UsageRecord, UsageRollup
from metering.selectors import current_alias_cost_rates
from tests.billing.routed_world import subscribe_payg
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage as record

pytestmark = pytest.mark.django_db
PACKAGED_CSV = Path(__file__).resolve().parents[3] / "billing" / "data" / "accelerators.csv"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, CatalogueRow]:
    return {row.key: row for row in catalogue_csv_read()}


@pytest.fixture
def h100():  # type: ignore[no-untyped-def]
    catalogue_load()
    return accelerator_get("nvidia-h100-sxm")


# --- The catalogue file -------------------------------------------------------------------


# SHA-256 of the published reference catalogue (14 accelerator types with their sources,
# gathered late 2026). billing/data/accelerators.csv must stay byte for byte that table: a
# change to a price, a throughput or a source is a new reference, made on purpose here.
REFERENCE_CSV_SHA256 = "b30bfd604b8ef063b256a193b17896f833333ff6c8040ac1d202aa1b6e2d02af"


def test_packaged_csv_is_the_reference_table_byte_for_byte() -> None:
    assert hashlib.sha256(PACKAGED_CSV.read_bytes()).hexdigest() == REFERENCE_CSV_SHA256


def test_catalogue_loads_every_row_with_unique_keys_and_sources() -> None:
    rows = catalogue_csv_read()
    data_lines = PACKAGED_CSV.read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 14 == len(data_lines)
    keys = [row.key for row in rows]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "nvidia-h100-sxm" and keys[-1] == "aws-trainium2"
    assert all(row.source.strip() for row in rows)
    assert {row.vendor for row in rows} == {"nvidia", "amd", "intel", "google", "aws"}


def test_catalogue_parses_values_and_nulls(catalogue: dict[str, CatalogueRow]) -> None:
    h100 = catalogue["nvidia-h100-sxm"]
    assert h100 == CatalogueRow(
        key="nvidia-h100-sxm",
        hourly_usd=Decimal("3.49"),
        tdp_watts=700,
        memory_gb=80,
        example_model="llama2-70b MLPerf v5.0 offline (8x DGX H100 31306.8/8)",
        output_tokens_per_s=Decimal(3913),
        source=(
            "price: RunPod Secure via tgarg01/silybench-data 2026-09-25; "
            "tput: mlcommons inference_results_v5.0 closed/NVIDIA DGX-H100 llama2-70b-99"
        ),
    )
    assert h100.vendor == "nvidia"
    assert catalogue["aws-trainium2"].hourly_usd == Decimal("2.235")
    assert catalogue["intel-gaudi3"].hourly_usd is None
    assert catalogue["nvidia-l4"].output_tokens_per_s is None
    assert catalogue["nvidia-l4"].example_model == ""
    assert catalogue["google-tpu-v5e"].tdp_watts is None
    assert catalogue["google-tpu-v5e"].output_tokens_per_s is None


def test_catalogue_csv_read_from_a_path_and_refusals(tmp_path: Path) -> None:
    header = "accelerator,hourly_usd,tdp_watts,memory_gb,example_model,output_tokens_per_s,source\n"
    good = tmp_path / "good.csv"
    good.write_text(header + "amd-x,1.5,,64,m,null,src\n", encoding="utf-8")
    (row,) = catalogue_csv_read(good)
    assert row.hourly_usd == Decimal("1.5") and row.tdp_watts is None
    assert row.output_tokens_per_s is None and row.vendor == "amd"

    for name, body in {
        "duplicate": header + "a-x,1,1,1,m,1,s\na-x,1,1,1,m,1,s\n",
        "no_source": header + "a-x,1,1,1,m,1,\n",
        "bad_number": header + "a-x,abc,1,1,m,1,s\n",
        "negative": header + "a-x,-1,1,1,m,1,s\n",
        "bad_header": "key,hourly_usd\na-x,1\n",
        "short_row": header + "a-x,1,1,1,m,1\n",
        "long_row": header + "a-x,1,1,1,m,1,s,extra\n",
    }.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(ValueError):
            catalogue_csv_read(path)


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
    old_rate = current_alias_cost_rates(["reasoner"])["reasoner"]
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
    rate = current_alias_cost_rates(["reasoner"])["reasoner"]
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
    subscribe_payg(key.tenant)
    rate = current_alias_cost_rates(["reasoner"])["reasoner"]
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
    assert result.floor_revenue_usd == floor_price(result.alternative_cost_usd, Decimal("0.2"))
    assert result.alternative_margin > result.actual_margin
