"""Serializers of the usage API, and the input fields every view shares: a calendar
month, an instant billing can compute with, a database id."""

from datetime import datetime
from typing import Any

from rest_framework import serializers
from rest_framework.request import Request

from billing.models import Alert
from billing.pricing.periods import EARLIEST_INSTANT, LATEST_INSTANT, Period, calendar_month
from metering.models import UsageRecord
from metering.selectors import GROUPINGS

# Ids and token counts are PostgreSQL bigints.
MAX_BIGINT = 2**63 - 1


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


def validated_query(serializer: type[serializers.Serializer], request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    """A view's query string through its input serializer (a 400 if it is invalid). DRF
    reads an empty optional parameter (`?tenant=`, as forms send) as absent."""
    query = serializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


class UsageQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="inclusive, ISO 8601")
    until = serializers.DateTimeField(required=False, help_text="exclusive, ISO 8601")
    api_key = serializers.IntegerField(required=False, min_value=1, max_value=MAX_BIGINT)
    alias = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since >= until:
            raise serializers.ValidationError({"until": "must be after since"})
        return attrs


class UsageSummaryQuerySerializer(UsageQuerySerializer):
    group_by = serializers.ChoiceField(choices=sorted(GROUPINGS), required=False)


class UsageRecordSerializer(serializers.ModelSerializer):
    api_key_prefix = serializers.CharField(source="api_key.prefix", read_only=True)

    class Meta:
        model = UsageRecord
        fields = [
            "request_id",
            "started_at",
            "finished_at",
            "recorded_at",
            "api_key_id",
            "api_key_prefix",
            "alias",
            "provider",
            "upstream_model",
            "accelerator",
            "endpoint",
            "stream",
            "status",
            "upstream_status",
            "upstream_response_id",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "reasoning_source",
            "flags",
            "client_disconnected",
            "ttft_us",
            "latency_us",
        ]
        read_only_fields = fields


class UsageSummaryRowSerializer(serializers.Serializer):
    alias = serializers.CharField(required=False)
    api_key_id = serializers.IntegerField(required=False)
    api_key_prefix = serializers.CharField(required=False)
    day = serializers.DateField(required=False)
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField(help_text="uncached input tokens")
    cached_input_tokens = serializers.IntegerField(help_text="input tokens read from cache")
    cache_write_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField(help_text="visible output tokens")
    reasoning_tokens = serializers.IntegerField(help_text="hidden reasoning tokens")
    total_tokens = serializers.IntegerField()
    reasoning_share_of_output = serializers.CharField(
        allow_null=True, help_text="reasoning / (visible output + reasoning), 6 decimals"
    )


class AlertQuerySerializer(serializers.Serializer):
    budget = serializers.CharField(
        required=False, max_length=100, help_text='e.g. "balance" or "spend_limit:12"'
    )
    since = serializers.DateTimeField(required=False, help_text="inclusive, ISO 8601")


class AlertSerializer(serializers.ModelSerializer):
    """A threshold crossed (the webhook's `data`, plus its delivery). The endpoint's
    secret and the delivery errors stay out of the API."""

    class Meta:
        model = Alert
        fields = [
            "event_id",
            "created_at",
            "budget",
            "description",
            "period",
            "threshold",
            "unit",
            "used",
            "limit",
            "delivery",
            "attempts",
            "delivered_at",
        ]
        read_only_fields = fields
