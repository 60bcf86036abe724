"""Serializers for prepaid balances: credits (top-ups and grants), the hard stop, the
balance now and its ledger. Amounts are exact decimals in major units, as strings."""

from typing import Any

from rest_framework import serializers

from api.serializers.fields import CurrencyField, ExactAmountField, ExactDecimalField, InstantField
from billing.balances import BalanceState, Credit
from billing.models import BalanceEntry


class CreditInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[str(k) for k in BalanceEntry.CREDIT_KINDS])
    amount = ExactAmountField(help_text='major units, as a string ("12.50") or an integer')
    currency = CurrencyField(default="USD")
    effective_at = InstantField(required=False, allow_null=True, default=None)
    expires_at = InstantField(
        required=False, allow_null=True, default=None, help_text="grants only"
    )
    description = serializers.CharField(max_length=300, default="", allow_blank=True)
    # stored as credit:<tenant uuid>:<key> in a 200-character column
    idempotency_key = serializers.CharField(max_length=150)


class BalanceSettingsInput(serializers.Serializer):
    hard_stop = serializers.BooleanField(
        help_text="refuse calls the available balance does not cover"
    )
    currency = CurrencyField(
        required=False,
        help_text="the balance's currency when this call opens it (USD by default); "
        "naming another currency than an existing balance's is a conflict",
    )


class CreditOutput(serializers.Serializer):
    """A top-up or grant and what is left of it (consumption by invoices and expiry)."""

    id = serializers.IntegerField(source="entry_id")
    kind = serializers.CharField()
    amount = ExactDecimalField()
    remaining = ExactDecimalField()
    effective_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class BalanceOutput(serializers.Serializer):
    """The prepaid position now: `remaining` = `available` - `uninvoiced_spend`; credits
    in the order invoices draw on them (expiring first)."""

    currency = serializers.CharField()
    hard_stop = serializers.BooleanField()
    available = ExactDecimalField(help_text="credits usable now, net of what invoices consumed")
    uninvoiced_spend = ExactDecimalField(
        help_text="usage since the last invoiced period, at list price"
    )
    remaining = ExactDecimalField()
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
