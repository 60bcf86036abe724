"""The input fields every area of the REST API shares (a calendar month, an instant billing
can compute with, an exact decimal, a currency, a database id) and the two ways a view
reads its input through a serializer."""

from datetime import datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request

from billing.pricing.currency import is_known_currency
from billing.pricing.periods import EARLIEST_INSTANT, LATEST_INSTANT, Period, calendar_month

# Ids and token counts are PostgreSQL bigints.
MAX_BIGINT = 2**63 - 1

# Amounts, prices and ratios: the precision of the NUMERIC(38,12) columns, sent as strings.
EXACT_DECIMAL = {"max_digits": 38, "decimal_places": 12, "coerce_to_string": True}


class PeriodField(serializers.Field):  # type: ignore[type-arg]
    """A calendar month "YYYY-MM" in, a billing Period out (billing.pricing.periods.calendar_month)."""

    def to_internal_value(self, data: Any) -> Period:
        if not isinstance(data, str):
            raise serializers.ValidationError("Use YYYY-MM.")
        try:
            return calendar_month(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value: Period) -> str:
        return f"{value.start:%Y-%m}"


class InstantField(serializers.DateTimeField):
    """An ISO 8601 instant within the range billing computes with (periods after it
    must still be representable)."""

    default_error_messages = {
        "range": f"Use an instant from {EARLIEST_INSTANT:%Y-%m-%d} to before "
        f"{LATEST_INSTANT:%Y-%m-%d} (UTC).",
    }

    def to_internal_value(self, value: Any) -> datetime:
        instant = super().to_internal_value(value)
        if not EARLIEST_INSTANT <= instant < LATEST_INSTANT:
            self.fail("range")
        return instant


class ExactDecimalField(serializers.DecimalField):
    """A decimal with every digit the engine keeps (`EXACT_DECIMAL`), as a string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**EXACT_DECIMAL, **kwargs})


@extend_schema_field({"oneOf": [{"type": "string", "format": "decimal"}, {"type": "integer"}]})
class ExactAmountField(ExactDecimalField):
    """A money amount sent as a string ("12.50") or an integer. A JSON number with a
    fraction arrives as a float, which may already differ from what the caller typed, so
    it is refused rather than guessed."""

    default_error_messages = {
        "float": 'Send the amount as a string ("12.50") or an integer, never a JSON float.',
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, float):
            self.fail("float")
        return super().to_internal_value(data)


class CurrencyField(serializers.CharField):
    """An ISO 4217 currency code billing knows, in any case in, upper case out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"max_length": 3, **kwargs})

    def run_validation(self, data: Any = serializers.empty) -> Any:
        value = super().run_validation(data)
        if not is_known_currency(value):
            raise serializers.ValidationError("Unknown ISO 4217 currency.")
        return value.upper()


def validated_query(serializer: type[serializers.Serializer], request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    """A view's query string through its input serializer (a 400 if it is invalid). DRF
    reads an empty optional parameter (`?tenant=`, as forms send) as absent."""
    query = serializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def validated_body(serializer: type[serializers.Serializer], request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    """A view's request body through its input serializer (a 400 if it is invalid)."""
    body = serializer(data=request.data)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)
