"""Serializers for plans, subscriptions, quotes, invoice previews and prepaid balances.

Money goes out as strings: `amount` in major units rounded as invoiced, `amount_minor` as an
integer, and `amount_exact` with every decimal the engine kept (never a float)."""

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from api.serializers import MAX_BIGINT, InstantField
from billing.balances import BalanceState, Credit
from billing.invoicing.lines import tier_charges_data
from billing.models import BalanceEntry, Plan, PlanVersion, PriceComponent, Subscription
from billing.pricing.currency import decimal_text as exact
from billing.pricing.currency import from_minor, is_known_currency
from billing.pricing.rate import RatedInvoice, RatedLine
from billing.pricing.validate import PlanIssue
from billing.rating import PeriodRating

MONEY = {"max_digits": 38, "decimal_places": 12, "coerce_to_string": True}


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


def issues_data(issues: list[PlanIssue]) -> list[dict[str, Any]]:
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
    unit_tokens = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT, default=1_000_000)
    unit_price = serializers.DecimalField(**MONEY, default=0)
    package_units = serializers.DecimalField(**MONEY, default=1)
    included_tokens = serializers.IntegerField(min_value=0, max_value=MAX_BIGINT, default=0)
    rounding = serializers.CharField(default="ROUND_HALF_UP")
    description = serializers.CharField(max_length=200, default="", allow_blank=True)
    tiers = TierInput(many=True, default=list)


class PlanVersionInput(serializers.Serializer):
    currency = serializers.CharField(max_length=3)
    base_fee = serializers.DecimalField(**MONEY, default=0)
    minimum_commitment = serializers.DecimalField(**MONEY, default=0)
    effective_from = InstantField()
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


# --- prepaid balances ------------------------------------------------------------------


@extend_schema_field({"oneOf": [{"type": "string", "format": "decimal"}, {"type": "integer"}]})
class ExactAmountField(serializers.DecimalField):
    """A money amount sent as a string ("12.50") or an integer. A JSON number with a
    fraction arrives as a float, which may already differ from what the caller typed, so
    it is refused rather than guessed."""

    default_error_messages = {
        "float": 'Send the amount as a string ("12.50") or an integer, never a JSON float.',
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**MONEY, **kwargs})

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, float):
            self.fail("float")
        return super().to_internal_value(data)


class CreditInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[str(k) for k in BalanceEntry.CREDIT_KINDS])
    amount = ExactAmountField(help_text='major units, as a string ("12.50") or an integer')
    currency = serializers.CharField(max_length=3, default="USD")
    effective_at = InstantField(required=False, allow_null=True, default=None)
    expires_at = InstantField(
        required=False, allow_null=True, default=None, help_text="grants only"
    )
    description = serializers.CharField(max_length=300, default="", allow_blank=True)
    # the service stores it as "credit:<key>" in a 200-character column
    # stored as credit:<tenant uuid>:<key> in a 200-character column
    idempotency_key = serializers.CharField(max_length=150)

    def validate_currency(self, value: str) -> str:
        if not is_known_currency(value):
            raise serializers.ValidationError("Unknown ISO 4217 currency.")
        return value.upper()


class BalanceSettingsInput(serializers.Serializer):
    hard_stop = serializers.BooleanField(
        help_text="refuse calls the available balance does not cover"
    )
    currency = serializers.CharField(
        max_length=3,
        required=False,
        help_text="the balance's currency when this call opens it (USD by default); "
        "naming another currency than an existing balance's is a conflict",
    )

    def validate_currency(self, value: str) -> str:
        if not is_known_currency(value):
            raise serializers.ValidationError("Unknown ISO 4217 currency.")
        return value.upper()


class CreditOutput(serializers.Serializer):
    """A top-up or grant and what is left of it (consumption by invoices and expiry)."""

    id = serializers.IntegerField(source="entry_id")
    kind = serializers.CharField()
    amount = serializers.DecimalField(**MONEY)
    remaining = serializers.DecimalField(**MONEY)
    effective_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class BalanceOutput(serializers.Serializer):
    """The prepaid position now: `remaining` = `available` - `uninvoiced_spend`; credits
    in the order invoices draw on them (expiring first)."""

    currency = serializers.CharField()
    hard_stop = serializers.BooleanField()
    available = serializers.DecimalField(
        **MONEY, help_text="credits usable now, net of what invoices consumed"
    )
    uninvoiced_spend = serializers.DecimalField(
        **MONEY, help_text="usage since the last invoiced period, at list price"
    )
    remaining = serializers.DecimalField(**MONEY)
    watermark = serializers.DateTimeField(
        allow_null=True, help_text="end of the last invoiced period (null: none yet)"
    )
    credits = CreditOutput(many=True)


def balance_data(state: BalanceState, credits: list[Credit]) -> dict[str, Any]:
    return dict(
        BalanceOutput(
            {
                "currency": state.currency,
                "hard_stop": state.hard_stop,
                "available": state.available,
                "uninvoiced_spend": state.uninvoiced_spend,
                "remaining": state.remaining,
                "watermark": state.watermark,
                "credits": credits,
            }
        ).data
    )


class BalanceEntryOutput(serializers.ModelSerializer):
    """One ledger entry: credits positive, draws on them negative."""

    credit = serializers.PrimaryKeyRelatedField(read_only=True, help_text="the credit drawn on")
    invoice_number = serializers.CharField(source="invoice.number", allow_null=True, read_only=True)

    class Meta:
        model = BalanceEntry
        fields = [
            "id",
            "kind",
            "amount",
            "effective_at",
            "expires_at",
            "credit",
            "invoice_number",
            "description",
            "created_at",
        ]
        read_only_fields = fields
