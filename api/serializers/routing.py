"""Serializers for routing visibility (decision 0117): the period query of the routing
views, the per-target figures they answer, and the what-if re-route's query and result.
Amounts are exact decimal text; ratios and means are rounded to six decimals."""

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from api.serializers.fields import InstantField, PeriodField
from api.serializers.finance import ratio_text
from billing.pricing.currency import decimal_text
from billing.pricing.periods import Period, calendar_month
from billing.reports import MarginRow
from billing.reroute import Reroute, RerouteLine, parse_weights
from config.errors import ApplicationError
from metering.models import Alias, Route
from metering.routing.policies import POLICIES
from metering.routing.stats import TargetStats

# The longest span one query may cover (the tables are small, a year of hours is not).
MAX_SPAN = timedelta(days=366)


class RoutingPeriodQuery(serializers.Serializer):
    """A calendar month (`period`), or `start` and `end`; default: this month so far.
    Statistics are hourly: an hour counts when it starts in [start, end)."""

    period = PeriodField(required=False, help_text="YYYY-MM; default: the current month")
    start = InstantField(required=False, help_text="inclusive, ISO 8601 (with end)")
    end = InstantField(required=False, help_text="exclusive, ISO 8601 (with start)")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start"), attrs.get("end")
        if "period" in attrs and (start or end):
            raise ValidationError({"period": "Give either period or start and end, not both."})
        if (start is None) != (end is None):
            raise ValidationError({"end" if start else "start": "Give both start and end."})
        if start is not None and end is not None:
            if start >= end:
                raise ValidationError({"end": "must be after start"})
            if end - start > MAX_SPAN:
                raise ValidationError({"end": "at most 366 days after start"})
            attrs["month"] = None
            attrs["range"] = (start, end)
            return attrs
        month = attrs.get("period") or calendar_month(f"{timezone.now():%Y-%m}")
        attrs["month"] = month
        attrs["range"] = (month.start, month.end)
        return attrs


def period_data(start: datetime, end: datetime, month: Period | None) -> dict[str, Any]:
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "month": None if month is None else f"{month.start:%Y-%m}",
    }


def target_summary_data(route: Route, stats: TargetStats) -> dict[str, Any]:
    """A target as the alias list shows it: its settings and the period's headline."""
    return {
        "route_id": route.pk,
        "name": route.name,
        "is_active": route.is_active,
        "provider": route.provider,
        "accelerator": route.accelerator,
        "upstream_model": route.upstream_model,
        "priority": route.priority,
        "weight": route.weight,
        "max_concurrent": route.max_concurrent,
        "first_byte_timeout_ms": route.first_byte_timeout_ms,
        "attempts": stats.attempts,
        "answered": stats.answered,
        "failed_over": stats.failed_over,
        "error_rate": ratio_text(stats.error_rate),
        "serving_cost_usd": decimal_text(stats.serving_cost_usd),
        "cost_per_call_usd": money_text(stats.cost_per_call),
    }


def money_text(value: Decimal | None) -> str | None:
    """Money per call to 12 places (NUMERIC(38,12)), the precision amounts keep."""
    return None if value is None else decimal_text(value.quantize(Decimal("1e-12")))


def target_detail_data(
    route: Route, stats: TargetStats, breaker: str, margin: MarginRow | None, margins: bool
) -> dict[str, Any]:
    """Every figure of one target over the period (see metering.routing.stats)."""
    return {
        **target_summary_data(route, stats),
        "breaker": breaker,
        "status_5xx": stats.status_5xx,
        "status_429": stats.status_429,
        "failed": stats.failed,
        "incomplete": stats.incomplete,
        "latency_ms": {"p50": stats.latency_ms.get(0.5), "p99": stats.latency_ms.get(0.99)},
        "ttft_ms": {"p50": stats.ttft_ms.get(0.5), "p99": stats.ttft_ms.get(0.99)},
        "mean_latency_ms": ratio_text(stats.mean_latency_ms),
        "tokens": stats.tokens,
        "spend_usd": decimal_text(stats.spend_usd),
        "efforts": [
            {
                "effort": e.effort,
                "attempts": e.attempts,
                "answered": e.answered,
                "reasoning_tokens": e.reasoning_tokens,
                "reasoning_per_call": ratio_text(e.reasoning_per_call),
                "cost_per_call_usd": money_text(e.cost_per_call),
            }
            for e in stats.efforts
        ],
        "margin": None
        if not margins
        else totals_data(
            cost_usd=margin.cost_usd if margin else Decimal(0),
            revenue_usd=margin.revenue_usd if margin else Decimal(0),
            gross_margin=margin.gross_margin if margin else None,
        ),
    }


def totals_data(
    *, cost_usd: Decimal, revenue_usd: Decimal, gross_margin: Decimal | None
) -> dict[str, Any]:
    """Cost, revenue and gross margin of some calls: a target's month, either side of a
    re-route."""
    return {
        "cost_usd": decimal_text(cost_usd),
        "revenue_usd": decimal_text(revenue_usd),
        "gross_margin": ratio_text(gross_margin),
    }


def alias_data(alias: Alias) -> dict[str, Any]:
    return {
        "alias": alias.name,
        "policy": alias.policy,
        "max_attempts": alias.max_attempts,
        "is_active": alias.is_active,
        "rules": alias.rules,
    }


class _Quantiles(serializers.Serializer):
    p50 = serializers.IntegerField(allow_null=True, help_text="ms, upper bucket edge")
    p99 = serializers.IntegerField(allow_null=True, help_text="ms, upper bucket edge")


class _EffortOutput(serializers.Serializer):
    effort = serializers.CharField(help_text='the effort the calls asked for ("" none)')
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    reasoning_per_call = serializers.CharField(allow_null=True)
    cost_per_call_usd = serializers.CharField(allow_null=True)


class _TotalsOutput(serializers.Serializer):
    cost_usd = serializers.CharField()
    revenue_usd = serializers.CharField()
    gross_margin = serializers.CharField(allow_null=True)


class TargetSummaryOutput(serializers.Serializer):
    route_id = serializers.IntegerField()
    name = serializers.CharField()
    is_active = serializers.BooleanField()
    provider = serializers.CharField()
    accelerator = serializers.CharField()
    upstream_model = serializers.CharField()
    priority = serializers.IntegerField()
    weight = serializers.IntegerField()
    max_concurrent = serializers.IntegerField(allow_null=True)
    first_byte_timeout_ms = serializers.IntegerField(allow_null=True)
    attempts = serializers.IntegerField(help_text="attempts, failed ones included")
    answered = serializers.IntegerField(help_text="completed or incomplete attempts")
    failed_over = serializers.IntegerField(help_text="attempts retried on another target")
    error_rate = serializers.CharField(
        allow_null=True, help_text="attempts not answered / attempts"
    )
    serving_cost_usd = serializers.CharField()
    cost_per_call_usd = serializers.CharField(
        allow_null=True, help_text="serving cost per answered attempt"
    )


class TargetDetailOutput(TargetSummaryOutput):
    breaker = serializers.CharField(
        help_text=(
            '"closed", "open until HH:MM:SS" (UTC), "half-open", or "unknown" (Redis out of reach)'
        )
    )
    status_5xx = serializers.IntegerField()
    status_429 = serializers.IntegerField()
    failed = serializers.IntegerField()
    incomplete = serializers.IntegerField()
    latency_ms = _Quantiles()
    ttft_ms = _Quantiles()
    mean_latency_ms = serializers.CharField(allow_null=True)
    tokens = serializers.DictField(child=serializers.IntegerField())
    spend_usd = serializers.CharField(help_text="at the alias's list prices")
    efforts = _EffortOutput(many=True)
    margin = _TotalsOutput(
        allow_null=True,
        help_text="calendar months only, for callers who may view margins (rated revenue "
        "split by tokens; margin_report's target grouping)",
    )


class _PeriodOutput(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    month = serializers.CharField(allow_null=True)


class AliasSummaryOutput(serializers.Serializer):
    alias = serializers.CharField()
    policy = serializers.ChoiceField(choices=Alias.Policy.choices)
    max_attempts = serializers.IntegerField()
    is_active = serializers.BooleanField()
    rules = serializers.JSONField()
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    failed_over = serializers.IntegerField()
    error_rate = serializers.CharField(allow_null=True)
    serving_cost_usd = serializers.CharField()
    spend_usd = serializers.CharField()
    targets = TargetSummaryOutput(many=True)


class AliasListOutput(serializers.Serializer):
    period = _PeriodOutput()
    aliases = AliasSummaryOutput(many=True)


class AliasDetailOutput(serializers.Serializer):
    period = _PeriodOutput()
    alias = serializers.CharField()
    policy = serializers.ChoiceField(choices=Alias.Policy.choices)
    max_attempts = serializers.IntegerField()
    is_active = serializers.BooleanField()
    rules = serializers.JSONField()
    targets = TargetDetailOutput(many=True)


# --- what-if re-route ---------------------------------------------------------------------


class RerouteQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM")
    alias = serializers.CharField(max_length=200)
    policy = serializers.ChoiceField(choices=POLICIES)
    weights = serializers.CharField(
        required=False,
        max_length=2000,
        help_text="weighted: target:weight,... (default: the targets' own weights)",
    )
    rules = serializers.CharField(
        required=False,
        max_length=20000,
        help_text="effort: the rules as JSON (default: the alias's own)",
    )

    def validate_weights(self, value: str) -> dict[str, int]:
        try:
            return parse_weights(value)
        except ApplicationError as exc:
            raise ValidationError(exc.message) from None

    def validate_rules(self, value: str) -> list[Any]:
        try:
            rules = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep
            raise ValidationError("Not valid JSON.") from None
        if not isinstance(rules, list):
            raise ValidationError("A JSON list of rules.")
        return rules


# The figures of a re-route line, in the order of the CSV's columns after the target.
REROUTE_FIGURES = (
    "actual_calls",
    "actual_cost_usd",
    "actual_revenue_usd",
    "actual_gross_margin",
    "rerouted_calls",
    "rerouted_cost_usd",
    "rerouted_revenue_usd",
    "rerouted_gross_margin",
)


def reroute_line_data(line: RerouteLine) -> dict[str, Any]:
    return {
        "route_id": line.route_id,
        "target": line.target,
        "is_active": line.is_active,
        "actual_calls": line.actual_calls,
        "actual_cost_usd": decimal_text(line.actual_cost_usd),
        "actual_revenue_usd": decimal_text(line.actual_revenue_usd),
        "actual_gross_margin": ratio_text(line.actual_margin),
        "rerouted_calls": line.rerouted_calls,
        "rerouted_cost_usd": decimal_text(line.rerouted_cost_usd),
        "rerouted_revenue_usd": decimal_text(line.rerouted_revenue_usd),
        "rerouted_gross_margin": ratio_text(line.rerouted_margin),
        "rerouted_tokens": line.rerouted_tokens,
    }


def reroute_data(result: Reroute) -> dict[str, Any]:
    return {
        "alias": result.alias,
        "period": f"{result.period.start:%Y-%m}",
        "policy": result.policy,
        "weights": result.weights,
        "rules": [
            {
                "name": r.name,
                "efforts": sorted(r.efforts),
                "max_input_tokens": r.max_input_tokens,
                "target": r.target,
            }
            for r in result.rules
        ],
        "calls": result.calls,
        "realized_revenue_per_million_usd": {
            c: money_text(v) for c, v in result.realized_revenue_per_million.items()
        },
        "actual": totals_data(
            cost_usd=result.actual_cost_usd,
            revenue_usd=result.actual_revenue_usd,
            gross_margin=result.actual_margin,
        ),
        "rerouted": totals_data(
            cost_usd=result.rerouted_cost_usd,
            revenue_usd=result.rerouted_revenue_usd,
            gross_margin=result.rerouted_margin,
        ),
        "difference": {
            "cost_usd": decimal_text(result.rerouted_cost_usd - result.actual_cost_usd),
            "revenue_usd": decimal_text(result.rerouted_revenue_usd - result.actual_revenue_usd),
            "margin_usd": decimal_text(
                (result.rerouted_revenue_usd - result.rerouted_cost_usd)
                - (result.actual_revenue_usd - result.actual_cost_usd)
            ),
        },
        "targets": [reroute_line_data(line) for line in result.lines],
    }


class _RerouteDifference(serializers.Serializer):
    cost_usd = serializers.CharField()
    revenue_usd = serializers.CharField()
    margin_usd = serializers.CharField(help_text="re-routed (revenue - cost) minus actual")


class _RerouteLineOutput(serializers.Serializer):
    route_id = serializers.IntegerField()
    target = serializers.CharField()
    is_active = serializers.BooleanField()
    actual_calls = serializers.IntegerField()
    actual_cost_usd = serializers.CharField()
    actual_revenue_usd = serializers.CharField()
    actual_gross_margin = serializers.CharField(allow_null=True)
    rerouted_calls = serializers.IntegerField()
    rerouted_cost_usd = serializers.CharField()
    rerouted_revenue_usd = serializers.CharField()
    rerouted_gross_margin = serializers.CharField(allow_null=True)
    rerouted_tokens = serializers.DictField(child=serializers.IntegerField())


class RerouteOutput(serializers.Serializer):
    alias = serializers.CharField()
    period = serializers.CharField()
    policy = serializers.CharField()
    weights = serializers.DictField(child=serializers.IntegerField())
    rules = serializers.ListField(child=serializers.DictField())
    calls = serializers.IntegerField(help_text="answered attempts re-routed")
    realized_revenue_per_million_usd = serializers.DictField(child=serializers.CharField())
    actual = _TotalsOutput()
    rerouted = _TotalsOutput()
    difference = _RerouteDifference()
    targets = _RerouteLineOutput(many=True)
