"""The input fields every area of the REST API shares (api/serializers/fields.py)."""

from decimal import Decimal

import pytest
from rest_framework import serializers

from api.serializers.fields import CurrencyField, ExactAmountField, ExactDecimalField


class Body(serializers.Serializer):
    currency = CurrencyField(default="USD")
    optional_currency = CurrencyField(required=False)
    amount = ExactAmountField(required=False)
    price = ExactDecimalField(required=False)


def errors(data: dict[str, object]) -> dict[str, list[str]]:
    body = Body(data=data)
    assert not body.is_valid()
    return {k: [str(m) for m in v] for k, v in body.errors.items()}


def test_a_currency_is_a_known_iso_code_upper_cased() -> None:
    body = Body(data={"currency": "eur"})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"currency": "EUR"}


def test_a_missing_currency_takes_its_default_or_stays_absent() -> None:
    body = Body(data={})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"currency": "USD"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ZZZ", "Unknown ISO 4217 currency."),
        ("EURO", "Ensure this field has no more than 3 characters."),
        ("", "This field may not be blank."),
    ],
)
def test_a_bad_currency_is_refused_with_one_message(value: str, message: str) -> None:
    assert errors({"optional_currency": value}) == {"optional_currency": [message]}


def test_an_amount_is_a_string_or_an_integer_never_a_float() -> None:
    assert Body(data={"amount": "12.50"}).is_valid()
    assert Body(data={"amount": 12}).is_valid()
    assert "never a JSON float" in errors({"amount": 12.5})["amount"][0]


def test_exact_decimals_keep_twelve_places_and_go_out_as_strings() -> None:
    field = ExactDecimalField()
    assert field.to_representation(Decimal("0.000000000001")) == "0.000000000001"
    with pytest.raises(serializers.ValidationError):
        field.run_validation("0.0000000000001")
