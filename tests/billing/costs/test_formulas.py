"""The hardware cost basis (billing.costs.formulas): the reference table, owned and rented
hourly cost, per-class costs, refusals on missing data, usage priced at class costs, and
properties.

Full-precision checks compare against exact rationals (``fractions.Fraction``): every
function rounds once to 50 significant digits, so its relative error is below 1e-49.
"""

import decimal
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.costs.catalogue import CatalogueRow, catalogue_csv_read
from billing.costs.formulas import (
    DEFAULT_POWER_USD_PER_KWH,
    DEFAULT_PUE,
    DEFAULT_UTILIZATION,
    HOURS_PER_YEAR,
    MissingCostData,
    OwnedCost,
    RentedCost,
    Throughput,
    class_costs,
    cost_per_million,
    hourly_cost,
)
from metering.ledger.record import Rates, serving_cost
from metering.usage import TOKEN_CLASSES

ONE_ULP_AT_50 = Fraction(1, 10**49)  # bound on the relative error of one 50-digit rounding


def catalogue_cost_per_million_output(row: CatalogueRow, utilization: Decimal) -> Decimal:
    """USD per 1M output tokens for a catalogue row rented at its listed rate and
    throughput; ``MissingCostData`` naming whichever of the two is null."""
    hourly, tokens_per_s = row.hourly_usd, row.output_tokens_per_s
    if hourly is None or tokens_per_s is None:
        fields = [("hourly_usd", hourly), ("output_tokens_per_s", tokens_per_s)]
        raise MissingCostData([name for name, value in fields if value is None], row.key)
    return cost_per_million(hourly, tokens_per_s, utilization)


def _close(value: Decimal, exact: Fraction) -> bool:
    """``value`` equals the exact rational up to one rounding to 50 significant digits."""
    if exact == 0:
        return value == 0
    return abs(Fraction(value) - exact) <= abs(exact) * ONE_ULP_AT_50


def _d3(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, CatalogueRow]:
    return {row.key: row for row in catalogue_csv_read()}


# --- The reference table ----------------------------------------------------------------

REFERENCE_TABLE = [
    # key, at 100% utilization, at 60%: the reference cost basis's published "implied cost
    # per 1M output tokens" (hourly / (output tokens per s * 3600) * 1e6, USD, 3 decimals)
    ("nvidia-h100-sxm", "0.248", "0.413"),
    ("nvidia-h200-sxm", "0.291", "0.486"),
    ("nvidia-b200", "0.153", "0.254"),
    ("amd-mi300x", "0.175", "0.291"),
    ("amd-mi325x", "0.128", "0.213"),
]


@pytest.mark.parametrize(("key", "full", "sixty"), REFERENCE_TABLE)
def test_reference_table_of_cost_per_million_output(
    catalogue: dict[str, CatalogueRow], key: str, full: str, sixty: str
) -> None:
    row = catalogue[key]
    assert _d3(catalogue_cost_per_million_output(row, Decimal(1))) == Decimal(full)
    assert _d3(catalogue_cost_per_million_output(row, Decimal("0.6"))) == Decimal(sixty)
    assert _d3(catalogue_cost_per_million_output(row, DEFAULT_UTILIZATION)) == Decimal(sixty)


def test_h100_cost_per_million_at_full_precision(catalogue: dict[str, CatalogueRow]) -> None:
    result = catalogue_cost_per_million_output(catalogue["nvidia-h100-sxm"], Decimal(1))
    # 3.49 / (3913 * 3600) * 1e6 = 3_490_000 / 14_086_800, rounded once to 50 digits.
    assert _close(result, Fraction(3_490_000, 14_086_800))
    assert len(result.as_tuple().digits) == 50
    # The exact quotient is 0.2477496663543175171082147826333872845500752477496|6635...
    # (repeating), so the 50th significant digit rounds up.
    assert result == Decimal("0.24774966635431751710821478263338728455007524774967")
    with decimal.localcontext(prec=50):
        assert abs(result * 3913 * 3600 - Decimal("3.49") * 1_000_000) < Decimal("1e-40")
    at_sixty = cost_per_million(Decimal("3.49"), Decimal(3913), Decimal("0.6"))
    assert _close(at_sixty, Fraction(3_490_000, 14_086_800) / Fraction(3, 5))


def test_cost_per_million_terminating_quotient_is_exact() -> None:
    # 3.60 $/h at 1000 tok/s, fully busy: 3.6e6 / 3.6e6 = exactly 1.
    assert cost_per_million(Decimal("3.60"), Decimal(1000), Decimal(1)) == Decimal(1)
    assert cost_per_million(Decimal("3.60"), Decimal(1000), Decimal("0.5")) == Decimal(2)
    assert cost_per_million(Decimal(0), Decimal(1000), Decimal("0.5")) == 0


def test_cost_per_million_ignores_the_callers_context() -> None:
    expected = cost_per_million(Decimal("3.49"), Decimal(3913), Decimal("0.6"))
    with decimal.localcontext(prec=3, rounding=decimal.ROUND_DOWN):
        assert cost_per_million(Decimal("3.49"), Decimal(3913), Decimal("0.6")) == expected


@pytest.mark.parametrize(
    ("hourly", "tokens_per_s", "utilization"),
    [
        (Decimal(1), Decimal(0), Decimal("0.6")),
        (Decimal(1), Decimal(-5), Decimal("0.6")),
        (Decimal(1), Decimal(100), Decimal(0)),
        (Decimal(1), Decimal(100), Decimal("1.01")),
        (Decimal(-1), Decimal(100), Decimal("0.6")),
        (Decimal("NaN"), Decimal(100), Decimal("0.6")),
        (1.5, Decimal(100), Decimal("0.6")),
        (Decimal(1), Decimal(100), True),
    ],
)
def test_cost_per_million_refuses_bad_inputs(
    hourly: object, tokens_per_s: object, utilization: object
) -> None:
    with pytest.raises(ValueError):
        cost_per_million(hourly, tokens_per_s, utilization)  # type: ignore[arg-type]


# --- Missing data is refused ------------------------------------------------------------


def test_gaudi3_without_a_price_refuses(catalogue: dict[str, CatalogueRow]) -> None:
    row = catalogue["intel-gaudi3"]
    with pytest.raises(MissingCostData) as caught:
        catalogue_cost_per_million_output(row, DEFAULT_UTILIZATION)
    assert caught.value.fields == ("hourly_usd",)
    assert caught.value.accelerator == "intel-gaudi3"
    assert "hourly_usd" in str(caught.value) and "intel-gaudi3" in str(caught.value)
    with pytest.raises(MissingCostData, match="hourly_usd"):
        hourly_cost(RentedCost(row.hourly_usd), accelerator=row.key)


def test_l4_without_throughput_refuses(catalogue: dict[str, CatalogueRow]) -> None:
    row = catalogue["nvidia-l4"]
    with pytest.raises(MissingCostData) as caught:
        catalogue_cost_per_million_output(row, DEFAULT_UTILIZATION)
    assert caught.value.fields == ("output_tokens_per_s",)
    assert "output_tokens_per_s" in str(caught.value) and "nvidia-l4" in str(caught.value)
    assert hourly_cost(RentedCost(row.hourly_usd), accelerator=row.key) == Decimal("0.80")


def test_both_missing_are_named_together() -> None:
    row = CatalogueRow("x-y", None, None, None, "", None, "src")
    with pytest.raises(MissingCostData) as caught:
        catalogue_cost_per_million_output(row, Decimal(1))
    assert caught.value.fields == ("hourly_usd", "output_tokens_per_s")


def test_tpu_v5e_tdp_null_matters_only_when_owned(catalogue: dict[str, CatalogueRow]) -> None:
    row = catalogue["google-tpu-v5e"]
    assert hourly_cost(RentedCost(row.hourly_usd), accelerator=row.key) == Decimal("1.20")
    owned = OwnedCost(
        purchase_price_usd=Decimal(10_000), amortization_years=Decimal(4), tdp_watts=row.tdp_watts
    )
    with pytest.raises(MissingCostData) as caught:
        hourly_cost(owned, accelerator=row.key)
    assert caught.value.fields == ("tdp_watts",)
    assert caught.value.accelerator == "google-tpu-v5e"


def test_owned_cost_names_every_missing_field() -> None:
    with pytest.raises(MissingCostData) as caught:
        hourly_cost(OwnedCost(None, None, None))
    assert caught.value.fields == ("purchase_price_usd", "amortization_years", "tdp_watts")
    assert caught.value.accelerator == ""
    assert isinstance(caught.value, ValueError)


# --- Cost per accelerator-hour ----------------------------------------------------------


def test_a_700w_part_adds_about_nine_cents_an_hour_of_energy() -> None:
    assert DEFAULT_PUE == Decimal("1.56") and DEFAULT_POWER_USD_PER_KWH == Decimal("0.08")
    energy_only = hourly_cost(OwnedCost(Decimal(0), Decimal(1), 700))
    assert energy_only == Decimal("0.7") * Decimal("1.56") * Decimal("0.08")
    assert energy_only == Decimal("0.087360")
    assert energy_only.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) == Decimal("0.09")


def test_owned_cost_worked_example_exact() -> None:
    # $31,536 over 4 years: 31536 / (4 * 8760) = 0.9 $/h; energy 0.7 * 1.56 * 0.08 =
    # 0.08736 $/h; other opex 0.15 $/h: 1.13736 $/h exactly.
    basis = OwnedCost(
        purchase_price_usd=Decimal(31_536),
        amortization_years=Decimal(4),
        tdp_watts=700,
        other_opex_per_hour=Decimal("0.15"),
    )
    assert HOURS_PER_YEAR == 8760
    assert hourly_cost(basis, accelerator="nvidia-h100-sxm") == Decimal("1.137360")


def test_owned_cost_non_terminating_example() -> None:
    # $30,000 over 4 years at 1000 W, PUE 1.2, $0.10/kWh, $0.05/h opex:
    # 30000/35040 + 1.0*1.2*0.10 + 0.05, rounded once.
    basis = OwnedCost(
        purchase_price_usd=Decimal(30_000),
        amortization_years=Decimal(4),
        tdp_watts=1000,
        power_usd_per_kwh=Decimal("0.10"),
        pue=Decimal("1.2"),
        other_opex_per_hour=Decimal("0.05"),
    )
    exact = Fraction(30_000, 35_040) + Fraction("0.12") + Fraction("0.05")
    assert _close(hourly_cost(basis), exact)


def test_owned_cost_refuses_zero_years_and_floats() -> None:
    with pytest.raises(ValueError):
        hourly_cost(OwnedCost(Decimal(1), Decimal(0), 700))
    with pytest.raises(ValueError):
        hourly_cost(OwnedCost(Decimal(1), Decimal(1), 700, pue=1.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hourly_cost(RentedCost(Decimal(-1)))


# --- Per-class costs --------------------------------------------------------------------


def test_class_costs_worked_example() -> None:
    # 3.60 $/h, decode 1000 tok/s, prefill 4000 tok/s, half busy.
    costs = class_costs(Decimal("3.60"), Throughput(Decimal(1000), Decimal(4000), Decimal("0.5")))
    assert costs == Rates(
        input=Decimal("0.5"),
        cache_read=Decimal("0.05"),
        cache_write=Decimal("0.625"),
        output=Decimal(2),
        reasoning=Decimal(2),
    )
    assert list(costs._asdict()) == list(TOKEN_CLASSES)


def test_reasoning_costs_exactly_what_output_costs() -> None:
    costs = class_costs(Decimal("3.49"), Throughput(Decimal(3913), Decimal(11739)))
    assert costs.reasoning == costs.output
    assert costs.output == cost_per_million(Decimal("3.49"), Decimal(3913), DEFAULT_UTILIZATION)
    assert costs.input == cost_per_million(Decimal("3.49"), Decimal(11739), DEFAULT_UTILIZATION)


def test_cache_factors_scale_the_input_cost() -> None:
    throughput = Throughput(
        Decimal(3913),
        Decimal(11739),
        cache_read_factor=Decimal("0.3"),
        cache_write_factor=Decimal("1.5"),
    )
    costs = class_costs(Decimal("3.49"), throughput)
    exact_input = Fraction("3.49") * 10**6 / (11739 * 3600 * Fraction("0.6"))
    assert _close(costs.input, exact_input)
    assert _close(costs.cache_read, exact_input * Fraction("0.3"))
    assert _close(costs.cache_write, exact_input * Fraction("1.5"))
    defaults = class_costs(Decimal("3.49"), Throughput(Decimal(3913), Decimal(11739)))
    assert _close(defaults.cache_read, exact_input * Fraction("0.1"))
    assert _close(defaults.cache_write, exact_input * Fraction("1.25"))


def test_missing_prefill_is_refused_not_guessed() -> None:
    with pytest.raises(MissingCostData) as caught:
        class_costs(Decimal("3.49"), Throughput(Decimal(3913), None), accelerator="nvidia-h100-sxm")
    assert caught.value.fields == ("prefill_tokens_per_s",)
    assert caught.value.accelerator == "nvidia-h100-sxm"
    with pytest.raises(MissingCostData) as both:
        class_costs(Decimal("3.49"), Throughput(None, None))
    assert both.value.fields == ("decode_tokens_per_s", "prefill_tokens_per_s")


def test_throughput_validates_its_ranges() -> None:
    with pytest.raises(ValueError):
        Throughput(Decimal(1), Decimal(1), utilization=Decimal("1.5"))
    with pytest.raises(ValueError):
        Throughput(Decimal(0), Decimal(1))
    with pytest.raises(ValueError):
        Throughput(Decimal(1), Decimal(1), cache_read_factor=Decimal("-0.1"))


# --- Usage: class costs priced by the ledger's formula ----------------------------------

WORKED_TOKENS = {
    "input": 1_000_000,  # 0.50
    "cache_read": 2_000_000,  # 0.10
    "cache_write": 400_000,  # 0.25
    "output": 300_000,  # 0.60
    "reasoning": 1_200_000,  # 2.40
}


def test_class_costs_price_usage_with_the_ledger_formula() -> None:
    # 3.60 $/h, decode 1000 tok/s, prefill 4000 tok/s, half busy (the worked example).
    costs = class_costs(Decimal("3.60"), Throughput(Decimal(1000), Decimal(4000), Decimal("0.5")))
    assert serving_cost(costs, **WORKED_TOKENS) == (Decimal("3.85"), Decimal("2.40"))


def test_usage_at_unrounded_class_costs_is_exact() -> None:
    costs = class_costs(Decimal("3.49"), Throughput(Decimal(3913), Decimal(11739)))
    tokens = {
        "input": 123_457,
        "cache_read": 9_876_543,
        "cache_write": 0,
        "output": 31_337,
        "reasoning": 271_828,
    }
    exact = sum(Fraction(getattr(costs, c)) * n for c, n in tokens.items()) / 10**6
    total, reasoning = serving_cost(costs, **tokens)
    assert Fraction(total) == exact
    assert Fraction(reasoning) == Fraction(costs.reasoning) * 271_828 / 10**6


# --- Properties -------------------------------------------------------------------------

positive_rates = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1000), places=2)
speeds = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(1_000_000), places=3)
utilizations = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(1), places=4)


@given(positive_rates, speeds, speeds, utilizations)
def test_cost_per_million_decreases_with_speed(
    hourly: Decimal, a: Decimal, b: Decimal, utilization: Decimal
) -> None:
    slow, fast = sorted((a, b))
    at_slow = cost_per_million(hourly, slow, utilization)
    at_fast = cost_per_million(hourly, fast, utilization)
    assert at_slow > at_fast if slow < fast else at_slow == at_fast


@given(positive_rates, speeds, utilizations, utilizations)
def test_cost_per_million_decreases_with_utilization(
    hourly: Decimal, tokens_per_s: Decimal, a: Decimal, b: Decimal
) -> None:
    low, high = sorted((a, b))
    at_low = cost_per_million(hourly, tokens_per_s, low)
    at_high = cost_per_million(hourly, tokens_per_s, high)
    assert at_low > at_high if low < high else at_low == at_high


@given(positive_rates, speeds, utilizations)
def test_cost_per_million_is_the_formula_rounded_once(
    hourly: Decimal, tokens_per_s: Decimal, utilization: Decimal
) -> None:
    exact = Fraction(hourly) * 10**6 / (Fraction(tokens_per_s) * 3600 * Fraction(utilization))
    assert _close(cost_per_million(hourly, tokens_per_s, utilization), exact)
