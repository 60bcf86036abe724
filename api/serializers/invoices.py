"""Serializers for invoices, their lines and credit notes, the invoice list and export
filters, and the live preview of the current period (`period_rating_data`)."""

from typing import Any

from rest_framework import serializers

from api.serializers.fields import MAX_BIGINT, PeriodField
from api.serializers.plans import rated_invoice_data
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.models import CreditNote, Invoice, InvoiceLine
from billing.period_rating import PeriodRating
from billing.pricing.currency import decimal_text as exact
from billing.pricing.currency import from_minor


class InvoiceQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=Invoice.Status.choices, required=False)
    period = PeriodField(required=False, help_text="YYYY-MM: invoices whose period starts in it")
    tenant = serializers.UUIDField(required=False, help_text="staff only")


class InvoiceExportQuery(InvoiceQuery):
    period = PeriodField(help_text="YYYY-MM: invoices whose period starts in it")
    kind = serializers.ChoiceField(choices=["invoices", "lines"], default="invoices")


class InvoiceLineOutput(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = INVOICE_LINE_FIELDS


class CreditNoteOutput(serializers.ModelSerializer):
    class Meta:
        model = CreditNote
        fields = ["number", "amount_minor", "reason", "created_at"]


class InvoiceOutput(serializers.ModelSerializer):
    tenant_name = serializers.CharField(source="tenant.name")
    credit_notes = CreditNoteOutput(many=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "status",
            "tenant",
            "tenant_name",
            "period_start",
            "period_end",
            "currency",
            "subtotal_minor",
            "tax_minor",
            "total_minor",
            "issue_date",
            "due_date",
            "usage_cutoff_record_id",
            "replaces",
            "finalized_at",
            "paid_at",
            "voided_at",
            "payment_failed_at",
            "stripe_invoice_id",
            "credit_notes",
        ]


class InvoiceDetailOutput(InvoiceOutput):
    lines = InvoiceLineOutput(many=True)

    class Meta(InvoiceOutput.Meta):
        fields = [*InvoiceOutput.Meta.fields, "lines"]


class CreditNoteInput(serializers.Serializer):
    amount_minor = serializers.IntegerField(
        min_value=1, max_value=MAX_BIGINT, required=False, help_text="omit for a full credit"
    )
    reason = serializers.CharField(max_length=300)


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
