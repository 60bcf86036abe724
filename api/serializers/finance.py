"""Serializers for the hardware cost basis and margins: the inputs that set a cost basis,
a margin policy or a deployment (checked by the pure cost model before anything is stored),
the margin report and what-if queries, and the data the finance views answer."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from api.serializers.fields import ExactDecimalField, InstantField, PeriodField
from billing.costs import formulas, margins
from billing.models import CostBasisVersion
from billing.pricing.currency import decimal_text
from billing.pricing.periods import EARLIEST_INSTANT, LATEST_INSTANT
from billing.reports import (
    DEFAULT_GROUPING,
    GROUPINGS,
    SERIES_GRANULARITIES,
    MarginCell,
    MarginRow,
    MarginSeries,
    WhatIf,
)

# The figures of a margin report row, in the order of the CSV's columns after the groups.
MARGIN_FIGURES = (
    "revenue_usd",
    "cost_usd",
    "gross_margin",
    "reasoning_cost_usd",
    "reasoning_share_of_cost",
    "provider_cost_usd",
    "provider_cost_difference_usd",
)


def decimal_text_or_none(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def ratio_text(value: Decimal | None) -> str | None:
    """A ratio or mean to six decimals (margins, shares, error rates)."""
    return None if value is None else decimal_text(value.quantize(Decimal("0.000001")))


class CostBasisInput(serializers.Serializer):
    mode = serializers.ChoiceField(choices=CostBasisVersion.Mode.choices)
    hourly_usd = ExactDecimalField(required=False, allow_null=True)
    purchase_price_usd = ExactDecimalField(required=False, allow_null=True)
    amortization_years = ExactDecimalField(required=False, allow_null=True)
    power_usd_per_kwh = ExactDecimalField(required=False)
    pue = ExactDecimalField(required=False)
    other_opex_per_hour = ExactDecimalField(required=False)
    effective_from = InstantField()
    note = serializers.CharField(max_length=300, required=False, default="")

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        """The pure cost model's own checks (amounts >= 0, amortization > 0), here so a
        basis that could never price is refused, not stored. Missing values may wait."""
        if attrs["mode"] == CostBasisVersion.Mode.RENTED:
            spec: formulas.RentedCost | formulas.OwnedCost = formulas.RentedCost(
                attrs.get("hourly_usd")
            )
        else:
            defaults = formulas.OwnedCost(None, None, None)
            spec = formulas.OwnedCost(
                purchase_price_usd=attrs.get("purchase_price_usd"),
                amortization_years=attrs.get("amortization_years"),
                tdp_watts=0,  # the accelerator's, known to be >= 0
                power_usd_per_kwh=attrs.get("power_usd_per_kwh", defaults.power_usd_per_kwh),
                pue=attrs.get("pue", defaults.pue),
                other_opex_per_hour=attrs.get("other_opex_per_hour", defaults.other_opex_per_hour),
            )
        try:
            formulas.hourly_cost(spec)
        except formulas.MissingCostData:
            pass
        except (ValueError, ArithmeticError) as exc:
            raise ValidationError({"cost_basis": str(exc)}) from exc
        return attrs


class MarginPolicyInput(serializers.Serializer):
    target_margin = ExactDecimalField()
    minimum_margin = ExactDecimalField()
    effective_from = InstantField()

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        try:
            margins.Margins(attrs["target_margin"], attrs["minimum_margin"])
        except ValueError as exc:
            raise ValidationError({"margins": str(exc)}) from exc
        return attrs


class DeploymentInput(serializers.Serializer):
    alias = serializers.CharField(max_length=200)
    # The alias's target the deployment serves (default: its only one).
    target = serializers.CharField(max_length=100, required=False, allow_null=True, default=None)
    accelerator = serializers.CharField(max_length=100)
    decode_tokens_per_s = ExactDecimalField(allow_null=True)
    prefill_tokens_per_s = ExactDecimalField(allow_null=True)
    utilization = ExactDecimalField(default=Decimal("0.6"))
    cache_read_factor = ExactDecimalField(default=Decimal("0.1"))
    cache_write_factor = ExactDecimalField(default=Decimal("1.25"))
    effective_from = InstantField()

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        """The pure cost model's checks (throughputs > 0, utilization in (0, 1])."""
        try:
            formulas.Throughput(
                decode_tokens_per_s=attrs["decode_tokens_per_s"],
                prefill_tokens_per_s=attrs["prefill_tokens_per_s"],
                utilization=attrs["utilization"],
                cache_read_factor=attrs["cache_read_factor"],
                cache_write_factor=attrs["cache_write_factor"],
            )
        except ValueError as exc:
            raise ValidationError({"throughput": str(exc)}) from exc
        return attrs


class MarginQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM")
    group_by = serializers.CharField(
        default=",".join(DEFAULT_GROUPING),
        max_length=200,
        help_text=f"comma-separated: {GROUPINGS}",
    )

    def validate_group_by(self, value: str) -> tuple[str, ...]:
        groups = tuple(g for g in value.split(",") if g)
        if not groups or any(g not in GROUPINGS for g in groups):
            raise ValidationError(f"Comma-separated, from {', '.join(GROUPINGS)}.")
        return groups


class WhatIfQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM")
    accelerator = serializers.CharField(max_length=100)
    tenant = serializers.UUIDField(required=False)
    alias = serializers.CharField(max_length=200, required=False)
    target_margin = ExactDecimalField(required=False)
    minimum_margin = ExactDecimalField(required=False)


def margin_row_data(row: MarginRow) -> dict[str, Any]:
    return {
        "key": list(row.key),
        "revenue_usd": decimal_text(row.revenue_usd),
        "cost_usd": decimal_text(row.cost_usd),
        "gross_margin": ratio_text(row.gross_margin),
        "reasoning_cost_usd": decimal_text(row.reasoning_cost_usd),
        "reasoning_share_of_cost": ratio_text(row.reasoning_share_of_cost),
        "provider_cost_usd": decimal_text_or_none(row.provider_cost_usd),
        "provider_cost_difference_usd": decimal_text_or_none(row.provider_cost_difference_usd),
        "tokens": dict(row.tokens),
    }


class MarginRowOutput(serializers.Serializer):
    """One row of the margin report (amounts are exact decimal text)."""

    key = serializers.ListField(
        child=serializers.CharField(),
        help_text='the group_by values; "(fees)" for fees of no alias, "(unattributed)" '
        "(tenant) for provider cost beyond what Reckon forwarded, per account",
    )
    revenue_usd = serializers.CharField()
    cost_usd = serializers.CharField(
        help_text="serving cost stamped on the records: the hardware cost basis, or for a "
        "resold route the list-price estimate"
    )
    gross_margin = serializers.CharField(allow_null=True)
    reasoning_cost_usd = serializers.CharField()
    reasoning_share_of_cost = serializers.CharField(allow_null=True)
    provider_cost_usd = serializers.CharField(
        allow_null=True,
        help_text="resold routes: the provider's reported cost allocated to this row; null "
        "for our own accelerators and while a day of the row is pending reconciliation",
    )
    provider_cost_difference_usd = serializers.CharField(
        allow_null=True,
        help_text="provider_cost_usd minus the list-price estimate of the same resold usage",
    )
    tokens = serializers.DictField(child=serializers.IntegerField())


class MarginReportOutput(serializers.Serializer):
    group_by = serializers.ListField(child=serializers.CharField())
    rows = MarginRowOutput(many=True)


def whatif_data(result: WhatIf) -> dict[str, Any]:
    return {
        "scope": result.scope,
        "tokens": result.tokens,
        "revenue_usd": decimal_text(result.revenue_usd),
        "actual": {
            "cost_usd": decimal_text(result.actual_cost_usd),
            "gross_margin": decimal_text_or_none(result.actual_margin),
        },
        "alternative": {
            "accelerator": result.alternative_accelerator,
            "cost_usd": decimal_text(result.alternative_cost_usd),
            "cost_per_million_usd": {
                alias: {k: decimal_text(v) for k, v in costs.items()}
                for alias, costs in result.alternative_class_costs.items()
            },
            "gross_margin": decimal_text_or_none(result.alternative_margin),
            "floor_revenue_usd": decimal_text(result.floor_revenue_usd),
            "target_revenue_usd": decimal_text(result.target_revenue_usd),
            "policy": {
                "target_margin": decimal_text(result.policy.target_margin),
                "minimum_margin": decimal_text(result.policy.minimum_margin),
            },
        },
    }


# The default window of a margin series (days, today included), and the longest one.
MARGIN_SERIES_DEFAULT_DAYS = 60
MARGIN_SERIES_MAX_DAYS = {"day": 400, "month": 3 * 366}


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class MarginSeriesQuery(serializers.Serializer):
    """A window of whole UTC days [since, until); by default the last 60 days, today
    included. Out: `since` and `until` as UTC midnights."""

    since = serializers.DateField(required=False, help_text="first day, inclusive (UTC)")
    until = serializers.DateField(required=False, help_text="day after the last, exclusive (UTC)")
    granularity = serializers.ChoiceField(choices=SERIES_GRANULARITIES, default="day")
    group_by = serializers.ChoiceField(choices=GROUPINGS, default="accelerator")

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        until = attrs.get("until") or (datetime.now(UTC).date() + timedelta(days=1))
        since = attrs.get("since") or (until - timedelta(days=MARGIN_SERIES_DEFAULT_DAYS))
        if not EARLIEST_INSTANT.date() <= since < until < LATEST_INSTANT.date():
            raise ValidationError(
                {"until": f"must be after since, both from {EARLIEST_INSTANT:%Y-%m-%d} on"}
            )
        longest = MARGIN_SERIES_MAX_DAYS[attrs["granularity"]]
        if (until - since).days > longest:
            raise ValidationError(
                {"since": f"spans more than {longest} days at {attrs['granularity']} buckets"}
            )
        return {**attrs, "since": _utc_midnight(since), "until": _utc_midnight(until)}


def margin_cell_data(cell: MarginCell) -> dict[str, Any]:
    return {
        "start": cell.start.isoformat(),
        "revenue_usd": decimal_text(cell.revenue_usd),
        "cost_usd": decimal_text(cell.cost_usd),
        "gross_margin_usd": decimal_text(cell.gross_margin_usd),
        "gross_margin": ratio_text(cell.gross_margin),
        "reasoning_cost_usd": decimal_text(cell.reasoning_cost_usd),
        "other_cost_usd": decimal_text(cell.other_cost_usd),
        "reasoning_share_of_cost": ratio_text(cell.reasoning_share_of_cost),
    }


def margin_series_data(query: dict[str, Any], series: MarginSeries) -> dict[str, Any]:
    """The answer of GET /api/v1/finance/margins/series (the console's margin charts are
    built from this very dict)."""
    return {
        "since": query["since"].isoformat(),
        "until": query["until"].isoformat(),
        "granularity": query["granularity"],
        "group_by": query["group_by"],
        "buckets": [b.isoformat() for b in series.buckets],
        "groups": [
            {"key": key, "label": series.group_labels[key]} for key in sorted(series.group_labels)
        ],
        "rows": [{"group": c.group, **margin_cell_data(c)} for c in series.rows],
        "totals": [margin_cell_data(c) for c in series.totals],
    }


class MarginCellOutput(serializers.Serializer):
    """Margins of one bucket (amounts are exact decimal text, ratios to six places)."""

    start = serializers.DateTimeField(help_text="the bucket's first instant (UTC)")
    revenue_usd = serializers.CharField(
        help_text="rated revenue allocated to the bucket: a line's share by the tokens served "
        "that day; fees of no alias evenly over their month's days"
    )
    cost_usd = serializers.CharField(help_text="serving cost stamped on the records")
    gross_margin_usd = serializers.CharField(help_text="revenue_usd - cost_usd")
    gross_margin = serializers.CharField(allow_null=True, help_text="gross_margin_usd / revenue")
    reasoning_cost_usd = serializers.CharField(help_text="serving cost of hidden reasoning")
    other_cost_usd = serializers.CharField(help_text="cost_usd - reasoning_cost_usd")
    reasoning_share_of_cost = serializers.CharField(allow_null=True)


class MarginSeriesRowOutput(MarginCellOutput):
    group = serializers.CharField()


class MarginSeriesGroupOutput(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField(help_text="a tenant's name; else the key")


class MarginSeriesOutput(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    granularity = serializers.CharField()
    group_by = serializers.CharField()
    buckets = serializers.ListField(child=serializers.DateTimeField())
    groups = MarginSeriesGroupOutput(many=True)
    rows = MarginSeriesRowOutput(many=True, help_text="(bucket, group) with usage or revenue")
    totals = MarginCellOutput(many=True, help_text="one per bucket, all groups")
