"""The pure pricing engine (billing/pricing/): worked examples, routing, validation, properties."""

from collections import Counter
from decimal import ROUND_DOWN, ROUND_HALF_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing.charges import (
    TierCharge,
    VolumeCliff,
    charge_graduated,
    charge_package,
    charge_per_unit,
    charge_volume,
    volume_cliffs,
)
from billing.pricing.currency import currency_exponent, from_minor, to_minor
from billing.pricing.priced_plan import CHARGE_MODELS, ComponentPrice, PricePlan, Tier, UsageVector
from billing.pricing.rate import RatedInvoice, RatedLine, rate
from billing.pricing.validate import PlanInvalid, PlanIssue, validate_plan

D = Decimal

# The worked example of the tier semantics (billing/pricing/rate.py): unit = 1k tokens.
WORKED_TIERS = (
    Tier(up_to=D(1000), unit_price=D("0.010"), flat_fee=D(5)),
    Tier(up_to=D(10000), unit_price=D("0.008"), flat_fee=D(10)),
    Tier(up_to=None, unit_price=D("0.005"), flat_fee=D(0)),
)

# units, graduated exact, graduated cents, volume exact, volume cents (verbatim from the table)
WORKED_EXAMPLE = [
    ("0", "5", 500, "5", 500),
    ("1000", "15.000", 1500, "15.00", 1500),
    ("1000.5", "25.004", 2500, "18.004", 1800),
    ("1001", "25.008", 2501, "18.008", 1801),
    ("10000", "97.00", 9700, "90.00", 9000),
    ("10001", "97.005", 9701, "50.005", 5001),
    ("12345", "108.725", 10873, "61.725", 6173),
]


def component(key: str = "c", *args: str, **kwargs: object) -> ComponentPrice:
    """component(key, token_class="output", charge_model="per_unit", **other fields)."""
    fields: dict[str, object] = {"token_class": "output", "charge_model": "per_unit"}
    fields.update(zip(("token_class", "charge_model"), args, strict=False))
    fields.update(kwargs)
    return ComponentPrice(key=key, **fields)  # type: ignore[arg-type]


def plan(*components: ComponentPrice, currency: str = "USD", **kwargs) -> PricePlan:  # type: ignore[no-untyped-def]
    return PricePlan(currency=currency, components=components, **kwargs)


def usage(**tokens: int) -> UsageVector:
    """usage(gpt__input=5) -> {("gpt", "input"): 5}."""
    return UsageVector({tuple(name.split("__")): count for name, count in tokens.items()})  # type: ignore[misc]


def line(invoice: RatedInvoice, key: str) -> RatedLine:
    (found,) = [each for each in invoice.lines if each.component_key == key]
    return found


# --- Worked example ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "grad_exact", "grad_minor", "vol_exact", "vol_minor"), WORKED_EXAMPLE
)
def test_worked_example_charge_functions(
    units: str, grad_exact: str, grad_minor: int, vol_exact: str, vol_minor: int
) -> None:
    graduated, _ = charge_graduated(D(units), WORKED_TIERS)
    volume, _ = charge_volume(D(units), WORKED_TIERS)
    assert graduated == D(grad_exact)
    assert volume == D(vol_exact)
    assert to_minor(graduated, "USD") == grad_minor
    assert to_minor(volume, "USD") == vol_minor


@pytest.mark.parametrize(
    ("units", "grad_exact", "grad_minor", "vol_exact", "vol_minor"), WORKED_EXAMPLE
)
def test_worked_example_rated_through_a_plan(
    units: str, grad_exact: str, grad_minor: int, vol_exact: str, vol_minor: int
) -> None:
    tokens = int(D(units) * 1000)  # 1000.5 units = 1_000_500 tokens
    graduated = component("grad", "input", "graduated", unit_tokens=1000, tiers=WORKED_TIERS)
    volume = component("vol", "output", "volume", unit_tokens=1000, tiers=WORKED_TIERS)
    invoice = rate(plan(graduated, volume), usage(m__input=tokens, m__output=tokens))

    grad_line, vol_line = invoice.lines
    assert grad_line.quantity == vol_line.quantity == D(units)
    assert (grad_line.amount_exact, grad_line.amount_minor) == (D(grad_exact), grad_minor)
    assert (vol_line.amount_exact, vol_line.amount_minor) == (D(vol_exact), vol_minor)
    assert invoice.subtotal_minor == invoice.total_minor == grad_minor + vol_minor


def test_graduated_breakdown_of_the_worked_example() -> None:
    amount, tiers = charge_graduated(D("1000.5"), WORKED_TIERS)
    assert tiers == (
        TierCharge(0, D(1000), D("0.010"), D(5), D("15.000")),
        TierCharge(1, D("0.5"), D("0.008"), D(10), D("10.004")),
    )
    assert amount == D("25.004")


def test_graduated_charges_the_first_flat_fee_at_zero_and_stays_in_the_lower_tier_at_a_bound() -> (
    None
):
    assert charge_graduated(D(0), WORKED_TIERS)[1] == (TierCharge(0, D(0), D("0.010"), D(5), D(5)),)
    assert [t.tier_index for t in charge_graduated(D(1000), WORKED_TIERS)[1]] == [0]
    assert [t.tier_index for t in charge_graduated(D(10000), WORKED_TIERS)[1]] == [0, 1]
    assert [t.tier_index for t in charge_graduated(D("10000.001"), WORKED_TIERS)[1]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("units", "tier_index"),
    [("0", 0), ("1000", 0), ("1000.0001", 1), ("10000", 1), ("10000.5", 2)],
)
def test_volume_picks_the_tier_the_whole_quantity_falls_in(units: str, tier_index: int) -> None:
    amount, (charge,) = charge_volume(D(units), WORKED_TIERS)
    assert charge.tier_index == tier_index
    assert charge.quantity == D(units)
    assert amount == charge.amount == D(units) * charge.unit_price + charge.flat_fee


# --- Per-unit and package ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "price_per_million", "exact", "minor"),
    [
        (0, "3", "0", 0),
        (1, "3", "0.000003", 0),
        (1_000_000, "3", "3", 300),
        (2_500_000, "0.15", "0.375", 38),
        (123_456_789, "15", "1851.851835", 185185),
    ],
)
def test_per_unit(tokens: int, price_per_million: str, exact: str, minor: int) -> None:
    invoice = rate(plan(component(unit_price=D(price_per_million))), usage(m__output=tokens))
    (only,) = invoice.lines
    assert only.quantity == D(tokens) / D(1_000_000)
    assert only.amount_exact == D(exact)
    assert only.amount_minor == minor
    assert only.tiers == (TierCharge(0, only.quantity, D(price_per_million), D(0), D(exact)),)


def test_charge_per_unit_directly() -> None:
    assert charge_per_unit(D("2.5"), D("0.4"))[0] == D("1.00")


@pytest.mark.parametrize(
    ("units", "package_units", "packages"),
    [
        ("0", "1", 0),
        ("0.000001", "1", 1),  # a partial package rounds up
        ("1", "1", 1),
        ("1.000001", "1", 2),
        ("5", "2.5", 2),
        ("5.0001", "2.5", 3),
        ("9999", "1000", 10),
    ],
)
def test_charge_package_rounds_partial_packages_up(
    units: str, package_units: str, packages: int
) -> None:
    amount, (charge,) = charge_package(D(units), D(package_units), D("2.00"))
    assert charge.quantity == packages
    assert charge.unit_price == D("2.00")
    assert amount == charge.amount == D("2.00") * packages


@pytest.mark.parametrize(
    ("tokens", "minor"),
    [(0, 0), (1, 200), (1_000_000, 200), (1_000_001, 400), (10_000_000, 2000)],
)
def test_package_component(tokens: int, minor: int) -> None:
    package = component(charge_model="package", unit_price=D(2), package_units=D(1))
    assert rate(plan(package), usage(m__output=tokens)).total_minor == minor


# --- Allowance --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "allowance", "billable", "minor"),
    [
        (0, 0, 0, 0),
        (400_000, 400_000, 0, 0),  # below the allowance
        (1_000_000, 1_000_000, 0, 0),  # exactly at it
        (1_500_000, 1_000_000, 500_000, 100),  # above it
    ],
)
def test_allowance(tokens: int, allowance: int, billable: int, minor: int) -> None:
    priced = component(unit_price=D(2), included_tokens=1_000_000)
    (only,) = rate(plan(priced), usage(m__output=tokens)).lines
    assert (only.tokens, only.allowance_tokens, only.billable_tokens) == (
        tokens,
        allowance,
        billable,
    )
    assert only.quantity == D(billable) / D(1_000_000)
    assert only.amount_minor == minor


def test_graduated_tiers_apply_to_the_billable_remainder() -> None:
    tiers = (Tier(D(1), D(10)), Tier(None, D(1)))
    graduated = component(charge_model="graduated", tiers=tiers, included_tokens=1_000_000)
    (only,) = rate(plan(graduated), usage(m__output=1_500_000)).lines
    # 0.5 billable units start again in tier 0 (at 10/unit), not at 1.5 units in tier 1.
    assert only.quantity == D("0.5")
    assert only.amount_exact == D(5)
    assert [t.tier_index for t in only.tiers] == [0]


# --- Routing ----------------------------------------------------------------------------


ROUTING_COMPONENTS = (
    component("input:all", "input", unit_price=D(1)),
    component("input:big", "input", unit_price=D(5), aliases=frozenset({"big"})),
    component("output:all", "output", unit_price=D(10)),
)


def test_a_scoped_component_beats_the_general_one() -> None:
    invoice = rate(plan(*ROUTING_COMPONENTS), usage(small__input=1_000_000, big__input=1_000_000))
    general, scoped = line(invoice, "input:all"), line(invoice, "input:big")
    assert (general.tokens, general.aliases, general.amount_minor) == (1_000_000, ("small",), 100)
    assert (scoped.tokens, scoped.aliases, scoped.amount_minor) == (1_000_000, ("big",), 500)


def test_reasoning_folds_into_output_when_no_component_prices_it() -> None:
    invoice = rate(
        plan(*ROUTING_COMPONENTS), usage(small__output=1_000_000, small__reasoning=2_000_000)
    )
    output = line(invoice, "output:all")
    assert (output.tokens, output.reasoning_tokens, output.billable_tokens) == (
        3_000_000,
        2_000_000,
        3_000_000,
    )
    assert output.amount_minor == 3000
    assert invoice.unpriced == ()


def test_a_reasoning_component_takes_precedence_over_folding() -> None:
    reasoning = component("reasoning:all", "reasoning", unit_price=D(20))
    invoice = rate(
        plan(*ROUTING_COMPONENTS, reasoning),
        usage(small__output=1_000_000, small__reasoning=2_000_000),
    )
    output, priced = line(invoice, "output:all"), line(invoice, "reasoning:all")
    assert (output.tokens, output.reasoning_tokens, output.amount_minor) == (1_000_000, 0, 1000)
    assert (priced.tokens, priced.reasoning_tokens, priced.amount_minor) == (2_000_000, 0, 4000)


def test_a_scoped_reasoning_component_only_catches_its_aliases() -> None:
    reasoning_big = component(
        "reasoning:big", "reasoning", unit_price=D(20), aliases=frozenset({"big"})
    )
    invoice = rate(
        plan(*ROUTING_COMPONENTS, reasoning_big),
        usage(big__reasoning=1_000_000, small__reasoning=1_000_000, small__output=1_000_000),
    )
    assert line(invoice, "reasoning:big").tokens == 1_000_000
    output = line(invoice, "output:all")
    assert (output.tokens, output.reasoning_tokens, output.aliases) == (
        2_000_000,
        1_000_000,
        ("small",),
    )


def test_reasoning_folds_into_the_scoped_output_component_of_its_alias() -> None:
    output_big = component("output:big", "output", unit_price=D(30), aliases=frozenset({"big"}))
    invoice = rate(plan(*ROUTING_COMPONENTS, output_big), usage(big__reasoning=1_000_000))
    assert line(invoice, "output:big").reasoning_tokens == 1_000_000
    assert line(invoice, "output:all").tokens == 0


def test_uncovered_usage_is_reported_as_unpriced_never_dropped() -> None:
    only_input = component("input:big", "input", unit_price=D(5), aliases=frozenset({"big"}))
    invoice = rate(
        plan(only_input),
        usage(
            big__input=1_000_000,
            small__input=7,
            big__cache_read=11,
            big__reasoning=13,  # no reasoning and no output component to fold into
            big__audio=17,  # a token class nobody prices
            small__cache_write=0,  # nothing to report
        ),
    )
    assert invoice.unpriced == (
        ("big", "audio", 17),
        ("big", "cache_read", 11),
        ("big", "reasoning", 13),
        ("small", "input", 7),
    )
    assert invoice.total_minor == 500


def test_a_component_prices_all_its_aliases_as_one_quantity() -> None:
    tiers = (Tier(D(1), D(10)), Tier(None, D(1)))
    graduated = component(charge_model="graduated", tiers=tiers)
    (only,) = rate(plan(graduated), usage(a__output=1_000_000, b__output=1_000_000)).lines
    # 2 units: 1 in tier 0 at 10 plus 1 in tier 1 at 1 (not 2 x 10 priced per alias).
    assert only.quantity == D(2)
    assert only.amount_exact == D(11)
    assert only.aliases == ("a", "b")


# --- Lines, base fee, minimum -----------------------------------------------------------


def test_one_line_per_component_in_plan_order_even_at_zero_usage() -> None:
    graduated = component("grad", "cache_read", "graduated", unit_tokens=1000, tiers=WORKED_TIERS)
    invoice = rate(plan(graduated, *ROUTING_COMPONENTS), UsageVector({}))
    assert [each.component_key for each in invoice.lines] == [
        "grad",
        "input:all",
        "input:big",
        "output:all",
    ]
    assert [each.amount_minor for each in invoice.lines] == [500, 0, 0, 0]  # the first flat fee
    assert all(each.kind == "usage" for each in invoice.lines)


def test_base_fee_line_comes_first() -> None:
    invoice = rate(
        plan(component(unit_price=D(1)), base_fee=D("49.99"), name="Pro"),
        usage(m__output=1_000_000),
    )
    base, usage_line = invoice.lines
    assert (base.kind, base.component_key, base.description) == ("base_fee", None, "Base fee (Pro)")
    assert (base.amount_exact, base.amount_minor) == (D("49.99"), 4999)
    assert usage_line.kind == "usage"
    assert invoice.total_minor == 4999 + 100


def test_no_base_fee_line_when_the_fee_is_zero() -> None:
    invoice = rate(plan(component(unit_price=D(1))), usage(m__output=1))
    assert [each.kind for each in invoice.lines] == ["usage"]


@pytest.mark.parametrize(
    ("usage_tokens", "true_up_minor"),
    [
        (0, 5000),
        (20_000_000, 3000),  # usage $20 against a $50 minimum
        (50_000_000, None),  # exactly at the minimum: no line
        (60_000_000, None),  # above it
    ],
)
def test_minimum_commitment(usage_tokens: int, true_up_minor: int | None) -> None:
    commitment = plan(component(unit_price=D(1)), base_fee=D(10), minimum_commitment=D(50))
    invoice = rate(commitment, usage(m__output=usage_tokens))
    kinds = [each.kind for each in invoice.lines]
    usage_minor = usage_tokens // 10_000
    if true_up_minor is None:
        assert kinds == ["base_fee", "usage"]
        assert invoice.total_minor == 1000 + usage_minor
    else:
        assert kinds == ["base_fee", "usage", "minimum_true_up"]
        true_up = invoice.lines[-1]
        assert (true_up.amount_minor, true_up.amount_exact) == (
            true_up_minor,
            from_minor(true_up_minor, "USD"),
        )
        # The base fee does not count toward the minimum.
        assert invoice.total_minor == 1000 + 5000


def test_minimum_compares_against_rounded_usage_lines() -> None:
    # Two lines of $0.004 each round to $0.00, so a $0.01 minimum needs a 1-cent true-up
    # even though the exact usage ($0.008) would round up to it.
    lines = (component("a", "input", unit_price=D(4)), component("b", "output", unit_price=D(4)))
    invoice = rate(plan(*lines, minimum_commitment=D("0.01")), usage(m__input=1000, m__output=1000))
    assert [each.amount_minor for each in invoice.lines] == [0, 0, 1]
    assert invoice.lines[-1].kind == "minimum_true_up"


# --- Currencies and rounding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "price", "tokens", "exact", "minor"),
    [
        ("JPY", "150", 1_234_567, "185.18505", 185),
        ("JPY", "150", 1_010_000, "151.5", 152),  # half-up to a whole yen
        ("KWD", "1", 1_234_500, "1.2345", 1235),  # 3 decimals: fils
        ("BHD", "0.5", 1_000_001, "0.5000005", 500),
        ("EUR", "2", 2_502_500, "5.005", 501),
    ],
)
def test_currency_exponents(currency: str, price: str, tokens: int, exact: str, minor: int) -> None:
    invoice = rate(plan(component(unit_price=D(price)), currency=currency), usage(m__output=tokens))
    (only,) = invoice.lines
    assert invoice.currency == currency
    assert (only.amount_exact, only.amount_minor) == (D(exact), minor)


def test_rounding_happens_once_per_line_not_per_tier() -> None:
    # Two tier subtotals of $0.004: per-tier rounding would bill $0.00, rounding once $0.01.
    tiers = (Tier(D("0.4"), D("0.01")), Tier(None, D("0.01")))
    graduated = component(charge_model="graduated", tiers=tiers)
    (only,) = rate(plan(graduated), usage(m__output=800_000)).lines
    assert [t.amount for t in only.tiers] == [D("0.004"), D("0.004")]
    assert sum(to_minor(t.amount, "USD") for t in only.tiers) == 0
    assert only.amount_exact == D("0.008")
    assert only.amount_minor == 1


@pytest.mark.parametrize(
    ("rounding", "minor"),
    [(ROUND_HALF_UP, 101), (ROUND_HALF_EVEN, 100), (ROUND_HALF_DOWN, 100), (ROUND_DOWN, 100)],
)
def test_a_component_names_its_rounding_mode(rounding: str, minor: int) -> None:
    priced = component(unit_price=D("1.005"), rounding=rounding)
    assert rate(plan(priced), usage(m__output=1_000_000)).lines[0].amount_minor == minor


# --- Inputs that are refused ------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: charge_per_unit(D(-1), D(1)),
        lambda: charge_per_unit(D(1), 0.5),
        lambda: charge_graduated(D(1), ()),
        lambda: charge_graduated(D(1), (Tier(D(10), D(1)),)),
        lambda: charge_volume(D("NaN"), WORKED_TIERS),
        lambda: charge_package(D(1), D(0), D(1)),
        lambda: volume_cliffs(
            component(charge_model="volume", tiers=(Tier(D(2), D(1)), Tier(D(1), D(1))))
        ),
    ],
)
def test_charge_functions_refuse_bad_input(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


def test_usage_vector_is_validated_and_read_only() -> None:
    source = {("m", "output"): 5}
    vector = UsageVector(source)
    source[("m", "output")] = 99
    assert vector.tokens[("m", "output")] == 5
    with pytest.raises(TypeError):
        vector.tokens[("m", "output")] = 1  # type: ignore[index]
    with pytest.raises(ValueError):
        UsageVector({("m", "output"): -1})
    with pytest.raises(ValueError):
        UsageVector({"m": 1})  # type: ignore[dict-item]


def test_usage_vectors_add_key_by_key() -> None:
    assert (usage(a__input=1, b__output=2) + usage(a__input=3)).tokens == {
        ("a", "input"): 4,
        ("b", "output"): 2,
    }


# --- validate_plan ----------------------------------------------------------------------


def tiered(model: str, *tiers: Tier, **kwargs) -> ComponentPrice:  # type: ignore[no-untyped-def]
    return component(charge_model=model, tiers=tiers, **kwargs)


OPEN = Tier(None, D(1))

INVALID_PLANS = [
    ("unknown_currency", plan(component(), currency="XYZ")),
    ("unknown_charge_model", plan(component(charge_model="tiered"))),
    ("missing_tiers", plan(tiered("graduated"))),
    ("missing_tiers", plan(tiered("volume"))),
    ("tiers_not_increasing", plan(tiered("graduated", Tier(D(10), D(1)), Tier(D(10), D(1)), OPEN))),
    ("tiers_not_increasing", plan(tiered("volume", Tier(D(10), D(1)), Tier(D(5), D(1)), OPEN))),
    ("open_tier_not_last", plan(tiered("graduated", OPEN, Tier(D(10), D(1)), OPEN))),
    ("last_tier_not_open", plan(tiered("graduated", Tier(D(10), D(1)), Tier(D(20), D(1))))),
    ("invalid_tier_bound", plan(tiered("volume", Tier(D(-1), D(1)), OPEN))),
    ("negative_price", plan(component(unit_price=D(-1)))),
    ("negative_price", plan(tiered("graduated", Tier(D(10), D(-1)), OPEN))),
    ("negative_fee", plan(tiered("volume", Tier(D(10), D(1), D(-5)), OPEN))),
    ("negative_fee", plan(component(), base_fee=D(-1))),
    ("negative_fee", plan(component(), minimum_commitment=D(-1))),
    ("negative_allowance", plan(component(included_tokens=-1))),
    ("invalid_unit_tokens", plan(component(unit_tokens=0))),
    ("invalid_unit_tokens", plan(component(unit_tokens=-1000))),
    ("invalid_package_units", plan(component(charge_model="package", package_units=D(0)))),
    ("invalid_package_units", plan(component(charge_model="package", package_units=D(-2)))),
    ("unknown_token_class", plan(component(token_class="audio"))),
    ("unknown_rounding", plan(component(rounding="ROUND_SOMETIMES"))),
    ("duplicate_component_key", plan(component("x", "input"), component("x", "output"))),
    ("invalid_number", plan(component(unit_price=0.5))),  # type: ignore[arg-type]
    ("overlapping_scope", plan(component("a", "input"), component("b", "input"))),
    (
        "overlapping_scope",
        plan(
            component("a", "input", aliases=frozenset({"gpt", "o3"})),
            component("b", "input", aliases=frozenset({"o3", "r1"})),
        ),
    ),
]


@pytest.mark.parametrize(("code", "bad_plan"), INVALID_PLANS)
def test_validate_plan_errors(code: str, bad_plan: PricePlan) -> None:
    issues = validate_plan(bad_plan)
    assert code in {issue.code for issue in issues if issue.severity == "error"}
    with pytest.raises(PlanInvalid) as raised:
        rate(bad_plan, UsageVector({}))
    assert code in {issue.code for issue in raised.value.issues}


def test_error_message_for_a_closed_last_tier() -> None:
    (issue,) = validate_plan(plan(tiered("graduated", Tier(D(10), D(1)), key="g")))
    assert issue == PlanIssue("error", "last_tier_not_open", "last tier must be open-ended", "g")


def test_overlap_points_at_the_second_component() -> None:
    issues = validate_plan(
        plan(
            component("a", "input", aliases=frozenset({"gpt", "o3"})),
            component("b", "input", aliases=frozenset({"o3"})),
        )
    )
    (issue,) = issues
    assert (issue.code, issue.component_key) == ("overlapping_scope", "b")
    assert "'o3'" in issue.message


@pytest.mark.parametrize(
    "valid_plan",
    [
        plan(component("g", "input", "graduated", unit_tokens=1000, tiers=WORKED_TIERS)),
        plan(*ROUTING_COMPONENTS, base_fee=D(10), minimum_commitment=D(50)),
        # Same alias for different token classes and disjoint scopes of one class are fine.
        plan(
            component("a", "input", aliases=frozenset({"gpt"})),
            component("b", "input", aliases=frozenset({"o3"})),
            component("c", "output", aliases=frozenset({"gpt"})),
            component("d", "input"),
            component("e", "cache_read", "package", unit_price=D(1), package_units=D("0.5")),
            currency="JPY",
        ),
    ],
)
def test_valid_plans_have_no_issues(valid_plan: PricePlan) -> None:
    assert validate_plan(valid_plan) == []


def test_volume_cliff_warning_for_the_worked_example() -> None:
    volume = component("vol", "output", "volume", unit_tokens=1000, tiers=WORKED_TIERS)
    assert volume_cliffs(volume) == [VolumeCliff("vol", D(10000), D(90), D(50), D(40))]
    assert validate_plan(plan(volume)) == [
        PlanIssue(
            "warning",
            "volume_cliff",
            "crossing 10000 units lowers the total from 90.00 to 50.00 (by 40.00)",
            "vol",
        )
    ]
    # A warning does not stop rating.
    assert rate(plan(volume), usage(m__output=10_001_000)).total_minor == 5001


def test_cliff_amounts_keep_digits_beyond_the_currency() -> None:
    tiers = (Tier(D(10), D("1.0005")), Tier(None, D("0.5")))
    (issue,) = validate_plan(plan(tiered("volume", *tiers, key="v")))
    assert issue.message == "crossing 10 units lowers the total from 10.005 to 5.00 (by 5.005)"


def test_graduated_components_have_no_cliffs() -> None:
    assert volume_cliffs(component(charge_model="graduated", tiers=WORKED_TIERS)) == []


@pytest.mark.parametrize(
    ("code", "warned"),
    [
        ("empty_alias_scope", component(aliases=frozenset())),
        ("unused_field", component(tiers=WORKED_TIERS)),
        ("unused_field", tiered("graduated", OPEN, unit_price=D(3))),
    ],
)
def test_validate_plan_warnings(code: str, warned: ComponentPrice) -> None:
    issues = validate_plan(plan(warned))
    assert [(issue.severity, issue.code) for issue in issues] == [("warning", code)]


# --- Properties -------------------------------------------------------------------------


def decimals(max_scaled: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(min_value=0, max_value=max_scaled).map(lambda n: Decimal(n).scaleb(-places))


quantities = decimals(10**9, 4)  # up to 100,000 units with 4 decimals
prices = decimals(10**6, 4)  # up to 100 per unit
fees = decimals(10**4, 2)  # up to 100


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.lists(st.integers(1, 10**7), max_size=4, unique=True)))
    ups: list[Decimal | None] = [Decimal(b).scaleb(-2) for b in bounds]
    ups.append(None)
    return tuple(Tier(up, draw(prices), draw(fees)) for up in ups)


@given(quantity=quantities, tiers=tier_lists())
def test_graduated_total_is_the_sum_of_its_tier_charges(
    quantity: Decimal, tiers: tuple[Tier, ...]
) -> None:
    amount, charges = charge_graduated(quantity, tiers)
    assert amount == sum((c.amount for c in charges), D(0))
    assert sum((c.quantity for c in charges), D(0)) == quantity
    assert all(c.amount == c.quantity * c.unit_price + c.flat_fee for c in charges)
    assert [c.tier_index for c in charges] == list(range(len(charges)))


@given(a=quantities, b=quantities, tiers=tier_lists(), price=prices)
def test_per_unit_and_graduated_never_decrease(
    a: Decimal, b: Decimal, tiers: tuple[Tier, ...], price: Decimal
) -> None:
    low, high = min(a, b), max(a, b)
    assert charge_per_unit(low, price)[0] <= charge_per_unit(high, price)[0]
    assert charge_graduated(low, tiers)[0] <= charge_graduated(high, tiers)[0]


@given(tiers=tier_lists())
def test_volume_cliffs_are_exactly_the_boundaries_where_the_total_drops(
    tiers: tuple[Tier, ...],
) -> None:
    volume = component("v", charge_model="volume", tiers=tiers)
    cliffs = {cliff.boundary: cliff for cliff in volume_cliffs(volume)}
    epsilon = D("1e-12")  # far below any drop these prices can produce (>= 1e-6)
    for tier in tiers[:-1]:
        assert tier.up_to is not None
        at, _ = charge_volume(tier.up_to, tiers)
        above, _ = charge_volume(tier.up_to + epsilon, tiers)
        assert (tier.up_to in cliffs) == (above < at)
        if tier.up_to in cliffs:
            assert cliffs[tier.up_to].total_at_boundary == at
            assert cliffs[tier.up_to].drop == at - cliffs[tier.up_to].total_just_above > 0


ALIASES = ("small", "big", "other")
TOKEN_CLASSES_USED = ("input", "cache_read", "cache_write", "output", "reasoning")


@st.composite
def price_components(
    draw: st.DrawFn, key: str, token_class: str, aliases: frozenset[str] | None
) -> ComponentPrice:
    model = draw(st.sampled_from(CHARGE_MODELS))
    return ComponentPrice(
        key=key,
        token_class=token_class,
        charge_model=model,
        aliases=aliases,
        unit_tokens=draw(st.sampled_from([1, 1000, 1_000_000])),
        unit_price=draw(prices) if model in ("per_unit", "package") else D(0),
        package_units=draw(decimals(10**4, 2).map(lambda d: d + D("0.01"))),
        tiers=draw(tier_lists()) if model in ("graduated", "volume") else (),
        included_tokens=draw(st.sampled_from([0, 0, 1000, 1_000_000])),
        rounding=draw(st.sampled_from([ROUND_HALF_UP, ROUND_HALF_EVEN, ROUND_HALF_DOWN])),
    )


@st.composite
def plans(draw: st.DrawFn) -> PricePlan:
    components: list[ComponentPrice] = []
    for token_class in TOKEN_CLASSES_USED:
        # Sometimes a class has no general component, so folding and unpriced usage happen.
        if draw(st.booleans()) or token_class == "input":
            components.append(draw(price_components(f"{token_class}:all", token_class, None)))
        if draw(st.booleans()):
            components.append(
                draw(price_components(f"{token_class}:big", token_class, frozenset({"big"})))
            )
    return PricePlan(
        currency=draw(st.sampled_from(["USD", "JPY", "KWD"])),
        components=tuple(draw(st.permutations(components))),
        base_fee=draw(fees),
        minimum_commitment=draw(st.sampled_from([D(0), D(5), D(500)])),
    )


usage_keys = st.tuples(st.sampled_from(ALIASES), st.sampled_from(TOKEN_CLASSES_USED))
usage_vectors = st.dictionaries(usage_keys, st.integers(0, 50_000_000), max_size=8).map(UsageVector)


@settings(deadline=None)
@given(plan_version=plans(), vector=usage_vectors)
def test_each_line_rounds_within_half_a_minor_unit(
    plan_version: PricePlan, vector: UsageVector
) -> None:
    invoice = rate(plan_version, vector)
    half = D(1).scaleb(-currency_exponent(plan_version.currency)) / 2
    for each in invoice.lines:
        assert abs(each.amount_exact - from_minor(each.amount_minor, plan_version.currency)) <= half
    assert (
        invoice.subtotal_minor
        == invoice.total_minor
        == sum(each.amount_minor for each in invoice.lines)
    )
    # Every token is either on a line or reported as unpriced.
    priced = sum(each.tokens for each in invoice.lines)
    unpriced = sum(count for _, _, count in invoice.unpriced)
    assert priced + unpriced == sum(vector.tokens.values())


@settings(deadline=None)
@given(plan_version=plans(), days=st.lists(usage_vectors, min_size=1, max_size=6))
def test_rating_summed_daily_usage_equals_rating_the_period_total(
    plan_version: PricePlan, days: list[UsageVector]
) -> None:
    period: Counter[tuple[str, str]] = Counter()
    for day in days:
        period.update(day.tokens)
    expected = rate(plan_version, UsageVector(dict(period)))
    assert rate(plan_version, reduce(lambda a, b: a + b, days)) == expected
    # Grouping does not matter: (d1 + d2) + rest == d1 + (d2 + rest).
    right_grouped = reduce(lambda a, b: b + a, reversed(days))
    assert rate(plan_version, right_grouped) == expected


@settings(deadline=None)
@given(
    plan_version=plans(),
    small=st.integers(0, 50_000_000),
    other=st.integers(0, 50_000_000),
    shift=st.integers(0, 50_000_000),
)
def test_moving_tokens_between_aliases_of_one_component_keeps_the_amounts(
    plan_version: PricePlan, small: int, other: int, shift: int
) -> None:
    # "small" and "other" both route to the general input component: it prices their sum.
    shift = min(shift, small)
    before = rate(plan_version, UsageVector({("small", "input"): small, ("other", "input"): other}))
    after = rate(
        plan_version,
        UsageVector({("small", "input"): small - shift, ("other", "input"): other + shift}),
    )
    assert [each.amount_exact for each in before.lines] == [
        each.amount_exact for each in after.lines
    ]
    assert before.total_minor == after.total_minor
