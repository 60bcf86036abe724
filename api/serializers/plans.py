"""Serializers for plans, plan versions, subscriptions, and quotes (usage priced against a
plan version).

Money goes out as strings: `amount` in major units rounded as invoiced, `amount_minor` as an
integer, and `amount_exact` with every decimal the engine kept (never a float)."""

from typing import Any

from rest_framework import serializers

from api.serializers.fields import MAX_BIGINT, CurrencyField, ExactDecimalField, InstantField
from billing.invoicing.lines import tier_charges_data
from billing.models import Plan, PlanVersion, PriceComponent, Subscription
from billing.pricing.currency import decimal_text as exact
from billing.pricing.currency import from_minor
from billing.pricing.rate import RatedInvoice, RatedLine
from billing.pricing.validate import PlanIssue


def rated_line_data(line: RatedLine, currency: str) -> dict[str, Any]:
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
        "tiers": tier_charges_data(line.tiers),
        "amount_exact": exact(line.amount_exact),
        "amount_minor": line.amount_minor,
        "amount": str(from_minor(line.amount_minor, currency)),
    }


def rated_invoice_data(rated: RatedInvoice) -> dict[str, Any]:
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


def issues_data(issues: list[PlanIssue]) -> list[dict[str, Any]]:
    return [
        {"severity": i.severity, "code": i.code, "message": i.message, "component": i.component_key}
        for i in issues
    ]


class TierInput(serializers.Serializer):
    up_to = ExactDecimalField(allow_null=True, required=False, default=None)
    unit_price = ExactDecimalField(default=0)
    flat_fee = ExactDecimalField(default=0)


class ComponentInput(serializers.Serializer):
    token_class = serializers.ChoiceField(choices=PriceComponent.TokenClass.choices)
    aliases = serializers.ListField(child=serializers.CharField(max_length=200), default=list)
    charge_model = serializers.ChoiceField(choices=PriceComponent.ChargeModel.choices)
    unit_tokens = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT, default=1_000_000)
    unit_price = ExactDecimalField(default=0)
    package_units = ExactDecimalField(default=1)
    included_tokens = serializers.IntegerField(min_value=0, max_value=MAX_BIGINT, default=0)
    rounding = serializers.CharField(default="ROUND_HALF_UP")
    description = serializers.CharField(max_length=200, default="", allow_blank=True)
    tiers = TierInput(many=True, default=list)


class PlanVersionInput(serializers.Serializer):
    currency = CurrencyField()
    base_fee = ExactDecimalField(default=0)
    minimum_commitment = ExactDecimalField(default=0)
    effective_from = InstantField()
    components = ComponentInput(many=True)


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
    up_to = ExactDecimalField(allow_null=True)
    unit_price = ExactDecimalField()
    flat_fee = ExactDecimalField()


class ComponentOutput(serializers.ModelSerializer):
    tiers = TierOutput(many=True)
    unit_price = ExactDecimalField()
    package_units = ExactDecimalField()

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
    base_fee = ExactDecimalField()
    minimum_commitment = ExactDecimalField()

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


class SubscriptionQuery(serializers.Serializer):
    tenant = serializers.UUIDField(required=False, help_text="only this tenant's subscriptions")


class SubscriptionInput(serializers.Serializer):
    tenant = serializers.UUIDField()
    plan_version = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT)
    starts_at = InstantField()
    anchor_day = serializers.IntegerField(min_value=1, max_value=28, default=1)


class ChangePlanInput(serializers.Serializer):
    plan_version = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT)
    at = InstantField()


class SubscriptionOutput(serializers.ModelSerializer):
    class Meta:
        model = Subscription
        fields = ["id", "tenant", "plan_version", "starts_at", "ends_at", "anchor_day", "previous"]


class UsageItemInput(serializers.Serializer):
    alias = serializers.CharField(max_length=200)
    token_class = serializers.ChoiceField(choices=PriceComponent.TokenClass.choices)
    tokens = serializers.IntegerField(min_value=0, max_value=MAX_BIGINT)


class QuoteInput(serializers.Serializer):
    plan_version = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT)
    usage = UsageItemInput(many=True)
