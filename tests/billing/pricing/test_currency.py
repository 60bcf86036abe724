"""Currency exponents and the single rounding step (billing.pricing.currency)."""

from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Decimal,
    localcontext,
)

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing.currency import (
    currency_exponent,
    decimal_text,
    from_minor,
    is_known_currency,
    quantize,
    to_minor,
)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("CHF", 2),
        ("CAD", 2),
        ("AUD", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("JOD", 3),
        ("usd", 2),  # codes match case-insensitively
    ],
)
def test_currency_exponent(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert is_known_currency(currency)


@pytest.mark.parametrize("currency", ["XYZ", "", "US", "DOLLARS"])
def test_unknown_currency_is_refused(currency: str) -> None:
    assert not is_known_currency(currency)
    with pytest.raises(ValueError, match="unknown currency"):
        currency_exponent(currency)
    with pytest.raises(ValueError, match="unknown currency"):
        to_minor(Decimal(1), currency)
    with pytest.raises(ValueError, match="unknown currency"):
        quantize(Decimal(1), currency, ROUND_HALF_UP)


@pytest.mark.parametrize(
    ("amount", "currency", "rounding", "minor"),
    [
        ("1.005", "USD", ROUND_HALF_UP, 101),
        ("1.005", "USD", ROUND_HALF_EVEN, 100),
        ("1.015", "USD", ROUND_HALF_EVEN, 102),
        ("1.009", "USD", ROUND_DOWN, 100),
        ("1.001", "USD", ROUND_UP, 101),
        ("-1.005", "USD", ROUND_HALF_UP, -101),  # half-up rounds away from zero
        ("0.004", "USD", ROUND_HALF_UP, 0),
        ("0.008", "USD", ROUND_HALF_UP, 1),
        ("0.5", "JPY", ROUND_HALF_UP, 1),
        ("0.49", "JPY", ROUND_HALF_UP, 0),
        ("1234", "KRW", ROUND_HALF_UP, 1234),
        ("1.2345", "KWD", ROUND_HALF_UP, 1235),
        ("1.2344", "BHD", ROUND_HALF_UP, 1234),
        ("12345678901234567890.125", "USD", ROUND_HALF_UP, 1234567890123456789013),
    ],
)
def test_to_minor(amount: str, currency: str, rounding: str, minor: int) -> None:
    assert to_minor(Decimal(amount), currency, rounding) == minor


def test_to_minor_defaults_to_half_up() -> None:
    assert to_minor(Decimal("0.125"), "USD") == 13


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [("1", "USD", "1.00"), ("1.005", "USD", "1.01"), ("2.5", "JPY", "3"), ("1", "KWD", "1.000")],
)
def test_quantize_keeps_the_currency_exponent(amount: str, currency: str, expected: str) -> None:
    result = quantize(Decimal(amount), currency, ROUND_HALF_UP)
    assert str(result) == expected


def test_int_amounts_are_money_but_floats_are_not() -> None:
    assert to_minor(3, "USD") == 300
    with pytest.raises(TypeError):
        to_minor(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quantize("1.00", "USD", ROUND_HALF_UP)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_amounts_are_refused(amount: Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        to_minor(amount, "USD")


def test_unknown_rounding_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="rounding"):
        to_minor(Decimal(1), "USD", "ROUND_SOMETIMES")


def test_callers_decimal_context_does_not_change_results() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = ROUND_DOWN
        assert to_minor(Decimal("123456.785"), "USD") == 12345679
        assert from_minor(12345679, "USD") == Decimal("123456.79")


@pytest.mark.parametrize(
    ("minor", "currency", "expected"),
    [
        (12345, "USD", "123.45"),
        (12345, "JPY", "12345"),
        (12345, "KWD", "12.345"),
        (-1, "EUR", "-0.01"),
    ],
)
def test_from_minor(minor: int, currency: str, expected: str) -> None:
    assert str(from_minor(minor, currency)) == expected


@given(
    minor=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(["USD", "JPY", "KWD", "CLF"]),
)
def test_from_minor_round_trips(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


@given(
    scaled=st.integers(min_value=-(10**12), max_value=10**12),
    places=st.integers(min_value=0, max_value=9),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
    rounding=st.sampled_from([ROUND_HALF_UP, ROUND_HALF_EVEN]),
)
def test_half_rounding_is_within_half_a_minor_unit(
    scaled: int, places: int, currency: str, rounding: str
) -> None:
    amount = Decimal(scaled).scaleb(-places)
    minor = to_minor(amount, currency, rounding)
    half_unit = Decimal(1).scaleb(-currency_exponent(currency)) / 2
    assert abs(amount - from_minor(minor, currency)) <= half_unit


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("4.000000000000", "4"),
        ("0E-12", "0"),
        ("-0.000", "0"),
        ("61.730", "61.73"),
        ("5E-7", "0.0000005"),
        ("1E+3", "1000"),
        ("-12.50", "-12.5"),
        # more digits than the default context's 28: written whole, never rounded
        ("39.51104455913978494623655913910", "39.5110445591397849462365591391"),
    ],
)
def test_decimal_text_is_exact_plain_digits(value: str, text: str) -> None:
    assert decimal_text(Decimal(value)) == text
    assert Decimal(decimal_text(Decimal(value))) == Decimal(value)
