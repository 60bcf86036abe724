"""One list of the fields an invoice line shows: the REST API's line output and the CSV
export both follow billing.invoicing.lines.INVOICE_LINE_FIELDS."""

from api.serializers.invoices import InvoiceLineOutput
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
