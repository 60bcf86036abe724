"""Serializers for plans, subscriptions, quotes and invoice previews.

Money goes out as strings: `amount` in major units rounded as invoiced, `amount_minor` as an
integer, and `amount_exact` with every decimal the engine kept (never a float)."""

from typing import Any

from rest_framework import serializers

from billing import pricing
from billing.currency import decimal_text as exact
from billing.currency import from_minor, is_known_currency
from billing.models import Plan, PlanVersion, PriceComponent, Subscription
from billing.services import PeriodRating

MONEY = {"max_digits": 38, "decimal_places": 12, "coerce_to_string": True}


def rated_line_data(line: pricing.RatedLine, currency: str) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "component": line.component_key,
        "description": line.description,
        "token_class": line.token_class,
        "aliases": list(line.aliases),
        "tokens": line.tokens,
        "reasoning_tokens": line.reasoning_tokens,
        "allowance_tokens": line.allowance_tokens,
        "billable_tokens": line.billable_tokens,
        "quantity": exact(line.quantity),
        "tiers": [
            {
                "tier": t.tier_index,
                "quantity": exact(t.quantity),
                "unit_price": exact(t.unit_price),
                "flat_fee": exact(t.flat_fee),
                "amount": exact(t.amount),
            }
            for t in line.tiers
        ],
        "amount_exact": exact(line.amount_exact),
        "amount_minor": line.amount_minor,
        "amount": str(from_minor(line.amount_minor, currency)),
    }


def rated_invoice_data(rated: pricing.RatedInvoice) -> dict[str, Any]:
    return {
        "currency": rated.currency,
        "lines": [rated_line_data(line, rated.currency) for line in rated.lines],
        "total_minor": rated.total_minor,
        "total": str(from_minor(rated.total_minor, rated.currency)),
        "unpriced": [
            {"alias": alias, "token_class": token_class, "tokens": tokens}
            for alias, token_class, tokens in rated.unpriced
        ],
    }


def period_rating_data(rating: PeriodRating) -> dict[str, Any]:
    return {
        "tenant": str(rating.tenant_id),
        "period": {"start": rating.period.start, "end": rating.period.end},
        "currency": rating.currency,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "subscription": s.subscription_id,
                "plan_version": s.plan_version_id,
                "share_of_period": exact(s.share),
                **rated_invoice_data(s.rated),
            }
            for s in rating.segments
        ],
        "total_minor": rating.total_minor,
        "total": str(from_minor(rating.total_minor, rating.currency)),
        "usage_cutoff_record_id": rating.cutoff_record_id,
    }


def issues_data(issues: list[pricing.PlanIssue]) -> list[dict[str, Any]]:
    return [
        {"severity": i.severity, "code": i.code, "message": i.message, "component": i.component_key}
        for i in issues
    ]


class TierInput(serializers.Serializer):
    up_to = serializers.DecimalField(**MONEY, allow_null=True, required=False, default=None)
    unit_price = serializers.DecimalField(**MONEY, default=0)
    flat_fee = serializers.DecimalField(**MONEY, default=0)


class ComponentInput(serializers.Serializer):
    token_class = serializers.ChoiceField(choices=PriceComponent.TokenClass.choices)
    aliases = serializers.ListField(child=serializers.CharField(max_length=200), default=list)
    charge_model = serializers.ChoiceField(choices=PriceComponent.ChargeModel.choices)
    unit_tokens = serializers.IntegerField(min_value=1, default=1_000_000)
    unit_price = serializers.DecimalField(**MONEY, default=0)
    package_units = serializers.DecimalField(**MONEY, default=1)
    included_tokens = serializers.IntegerField(min_value=0, default=0)
    rounding = serializers.CharField(default="ROUND_HALF_UP")
    description = serializers.CharField(max_length=200, default="", allow_blank=True)
    tiers = TierInput(many=True, default=list)


class PlanVersionInput(serializers.Serializer):
    currency = serializers.CharField(max_length=3)
    base_fee = serializers.DecimalField(**MONEY, default=0)
    minimum_commitment = serializers.DecimalField(**MONEY, default=0)
    effective_from = serializers.DateTimeField()
    components = ComponentInput(many=True)

    def validate_currency(self, value: str) -> str:
        if not is_known_currency(value):
            raise serializers.ValidationError("Unknown ISO 4217 currency.")
        return value.upper()


class PlanInput(serializers.Serializer):
    code = serializers.SlugField(max_length=100)
    name = serializers.CharField(max_length=200)


class PlanOutput(serializers.ModelSerializer):
    versions = serializers.SerializerMethodField()

    class Meta:
        model = Plan
        fields = ["id", "code", "name", "created_at", "versions"]

    def get_versions(self, plan: Plan) -> list[dict[str, Any]]:
        return [
            {"id": v.pk, "version": v.version, "status": v.status, "currency": v.currency}
            for v in plan.versions.all()
        ]


class TierOutput(serializers.Serializer):
    up_to = serializers.DecimalField(**MONEY, allow_null=True)
    unit_price = serializers.DecimalField(**MONEY)
    flat_fee = serializers.DecimalField(**MONEY)


class ComponentOutput(serializers.ModelSerializer):
    tiers = TierOutput(many=True)
    unit_price = serializers.DecimalField(**MONEY)
    package_units = serializers.DecimalField(**MONEY)

    class Meta:
        model = PriceComponent
        fields = [
            "id",
            "position",
            "token_class",
            "aliases",
            "charge_model",
            "unit_tokens",
            "unit_price",
            "package_units",
            "included_tokens",
            "rounding",
            "description",
            "tiers",
        ]


class PlanVersionOutput(serializers.ModelSerializer):
    plan = serializers.CharField(source="plan.code")
    components = ComponentOutput(many=True)
    base_fee = serializers.DecimalField(**MONEY)
    minimum_commitment = serializers.DecimalField(**MONEY)

    class Meta:
        model = PlanVersion
        fields = [
            "id",
            "plan",
            "version",
            "status",
            "currency",
            "base_fee",
            "minimum_commitment",
            "effective_from",
            "published_at",
            "components",
        ]


class SubscriptionInput(serializers.Serializer):
    tenant = serializers.UUIDField()
    plan_version = serializers.IntegerField()
    starts_at = serializers.DateTimeField()
    anchor_day = serializers.IntegerField(min_value=1, max_value=28, default=1)


class ChangePlanInput(serializers.Serializer):
    plan_version = serializers.IntegerField()
    at = serializers.DateTimeField()


class SubscriptionOutput(serializers.ModelSerializer):
    class Meta:
        model = Subscription
        fields = ["id", "tenant", "plan_version", "starts_at", "ends_at", "anchor_day", "previous"]


class UsageItemInput(serializers.Serializer):
    alias = serializers.CharField(max_length=200)
    token_class = serializers.ChoiceField(choices=PriceComponent.TokenClass.choices)
    tokens = serializers.IntegerField(min_value=0)


class QuoteInput(serializers.Serializer):
    plan_version = serializers.IntegerField()
    usage = UsageItemInput(many=True)
