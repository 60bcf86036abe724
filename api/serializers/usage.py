"""Serializers of the usage API: usage records, usage summaries and series, and the
budget and balance alerts."""

from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from api.serializers.fields import MAX_BIGINT, InstantField
from billing.models import Alert
from metering.models import UsageRecord
from metering.selectors import GRANULARITIES, GROUPINGS
from metering.usage import LEDGER_COLUMNS

# How groups are listed (decision 0113): the same on every database and read path.
GROUP_ORDER = (
    "groups in ascending order: aliases by Unicode code point (uppercase before lowercase;"
    " not the database's collation), keys by id, days by date"
)


class UsageQuery(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="inclusive, ISO 8601")
    until = serializers.DateTimeField(required=False, help_text="exclusive, ISO 8601")
    api_key = serializers.IntegerField(required=False, min_value=1, max_value=MAX_BIGINT)
    alias = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since >= until:
            raise serializers.ValidationError({"until": "must be after since"})
        return attrs


class UsageSummaryQuery(UsageQuery):
    since = InstantField(required=False, help_text="inclusive, ISO 8601")
    until = InstantField(required=False, help_text="exclusive, ISO 8601")
    group_by = serializers.ChoiceField(
        choices=sorted(GROUPINGS), required=False, help_text=GROUP_ORDER
    )


# The most buckets one series may span (an hourly series of about 83 days).
MAX_SERIES_BUCKETS = 2000
_BUCKET_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1), "month": timedelta(days=28)}


class UsageSeriesQuery(UsageQuery):
    granularity = serializers.ChoiceField(choices=GRANULARITIES, help_text="UTC buckets")
    since = InstantField(help_text="inclusive, ISO 8601")
    until = InstantField(required=False, help_text="exclusive, ISO 8601; default now")
    group_by = serializers.ChoiceField(
        choices=sorted(set(GROUPINGS) - {"day"}),
        required=False,
        help_text=f"within each bucket; {GROUP_ORDER}",
    )

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        attrs.setdefault("until", timezone.now())
        attrs = super().validate(attrs)
        span = attrs["until"] - attrs["since"]
        if span > MAX_SERIES_BUCKETS * _BUCKET_LENGTH[attrs["granularity"]]:
            raise serializers.ValidationError(
                {"since": f"spans more than {MAX_SERIES_BUCKETS} {attrs['granularity']} buckets"}
            )
        return attrs


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
            *LEDGER_COLUMNS,  # the five token classes, reasoning last
            "reasoning_source",
            "flags",
            "client_disconnected",
            "ttft_us",
            "latency_us",
        ]
        read_only_fields = fields


class _UsageTotalsSerializer(serializers.Serializer):
    """The totals every usage summary row and series bucket carries."""

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


class UsageSummaryRowSerializer(_UsageTotalsSerializer):
    alias = serializers.CharField(required=False)
    api_key_id = serializers.IntegerField(required=False)
    api_key_prefix = serializers.CharField(required=False)
    day = serializers.DateField(required=False)


class UsageSeriesRowSerializer(_UsageTotalsSerializer):
    start = serializers.DateTimeField(help_text="first instant of the UTC bucket")
    alias = serializers.CharField(required=False)
    api_key_id = serializers.IntegerField(required=False)


class AlertQuery(serializers.Serializer):
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
