"""One list of the fields an invoice line shows: the REST API's line output, the CSV
export and the admin's line table all follow billing.invoicing.lines.INVOICE_LINE_FIELDS."""

from api.serializers.invoices import InvoiceLineOutput
from billing.admin.invoices import InvoiceLineInline
from billing.invoicing.documents import LINE_COLUMNS
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.models import InvoiceLine


def test_the_api_shows_every_line_field() -> None:
    assert InvoiceLineOutput.Meta.fields == INVOICE_LINE_FIELDS


def test_the_csv_columns_follow_the_line_fields() -> None:
    assert LINE_COLUMNS == [
        "invoice_number",
        "position",
        "kind",
        "description",
        "plan_version_id",
        "segment_start",
        "segment_end",
        "adjusts_period_start",
        "token_class",
        "aliases",
        "tokens",
        "reasoning_tokens",
        "allowance_tokens",
        "billable_tokens",
        "quantity",
        "amount_exact",
        "amount_minor",
        "usage_cutoff_record_id",
    ]
    for column in LINE_COLUMNS[1:]:
        assert hasattr(InvoiceLine, column)


def test_the_admin_shows_the_line_fields_minus_the_wide_ones() -> None:
    assert InvoiceLineInline.fields == (
        "position",
        "kind",
        "description",
        "plan_version",
        "adjusts_period_start",
        "token_class",
        "tokens",
        "reasoning_tokens",
        "allowance_tokens",
        "quantity",
        "amount_exact",
        "amount_minor",
        "usage_cutoff_record_id",
    )
    assert InvoiceLineInline.readonly_fields == InvoiceLineInline.fields
    assert set(INVOICE_LINE_FIELDS) - set(InvoiceLineInline.fields) == {
        "segment_start",
        "segment_end",
        "component_key",
        "aliases",
        "billable_tokens",
        "tiers",
    }
