"""Finance documents from stored invoices: the PDF's data, and CSV exports.

Everything printed or exported is read from the invoice and its lines as stored: the
document is reproducible, and nothing here computes money.

The PDF module (billing.invoicing.pdf) is imported where a document is built, not at the
top: it loads fpdf2 (with fontTools and Pillow), about a second of imports, and every
process imports this module (admin, API and console URLs) while few render a PDF."""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings

from billing.csv_cells import SafeWriter
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.models import Invoice, InvoiceLine
from billing.pricing.currency import currency_exponent

if TYPE_CHECKING:
    from billing.invoicing.pdf import DocumentLine, InvoiceDocument


def _tokens(n: int) -> str:
    return f"{n:,} tokens"


def _line(line: InvoiceLine) -> DocumentLine:
    from billing.invoicing.pdf import DocumentLine, TierRow

    if line.kind == InvoiceLine.Kind.USAGE:
        quantity = _tokens(line.billable_tokens)
    elif line.kind == InvoiceLine.Kind.ADJUSTMENT:
        quantity = "adjustment"
    else:
        quantity = "1"
    notes = []
    if line.allowance_tokens:
        notes.append(f"{line.allowance_tokens:,} tokens included in the plan")
    if line.reasoning_tokens and line.token_class == "output":
        notes.append(f"of which {line.reasoning_tokens:,} hidden reasoning tokens")
    if line.aliases:
        notes.append("models: " + ", ".join(line.aliases))
    tiers = tuple(
        TierRow(
            label=f"Tier {t['tier'] + 1}",
            quantity=t["quantity"],
            unit_price=t["unit_price"],
            flat_fee=t["flat_fee"],
            amount=t["amount"],
        )
        for t in line.tiers
    )
    return DocumentLine(
        description=line.description,
        quantity=quantity,
        amount_minor=line.amount_minor,
        tiers=tiers,
        note="; ".join(notes),
    )


def invoice_document(invoice: Invoice) -> InvoiceDocument:
    from billing.invoicing.pdf import InvoiceDocument, Party, TaxRow

    seller: dict[str, Any] = settings.RECKON_SELLER
    status = invoice.status
    return InvoiceDocument(
        title="Invoice",
        number=invoice.number or "",
        status=status,
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        period_start=invoice.period_start.date(),
        period_end=invoice.period_end.date(),
        currency=invoice.currency,
        currency_exponent=currency_exponent(invoice.currency),
        seller=Party(
            name=seller["name"],
            address_lines=tuple(seller["address_lines"]),
            tax_id=seller["tax_id"],
            email=seller["email"],
        ),
        buyer=Party(name=invoice.tenant.name, tax_id="", email=""),
        lines=tuple(_line(line) for line in invoice.lines.order_by("position")),
        subtotal_minor=invoice.subtotal_minor,
        taxes=(TaxRow(name="Tax", rate="0%", amount_minor=invoice.tax_minor),),
        total_minor=invoice.total_minor,
        notes=(
            f"Usage included up to ledger record {invoice.usage_cutoff_record_id}.",
            f"Billing period [{invoice.period_start:%Y-%m-%d}, {invoice.period_end:%Y-%m-%d}) UTC;"
            f" last day billed {(invoice.period_end - timedelta(days=1)):%Y-%m-%d}.",
            *(
                f"Credit note {c.number}: -{c.amount_minor} minor units ({c.reason})"
                for c in invoice.credit_notes.all()
            ),
        ),
        reference=invoice.replaces.number if invoice.replaces and invoice.replaces.number else "",
    )


def invoice_pdf(invoice: Invoice) -> bytes:
    from billing.invoicing.pdf import render_invoice_pdf

    return render_invoice_pdf(invoice_document(invoice))


INVOICE_COLUMNS = [
    "number",
    "status",
    "tenant_id",
    "tenant",
    "period_start",
    "period_end",
    "currency",
    "subtotal_minor",
    "tax_minor",
    "total_minor",
    "credited_minor",
    "issue_date",
    "due_date",
    "usage_cutoff_record_id",
    "stripe_invoice_id",
]
# Every line field but the tier breakdown and the component key, the plan version by id,
# after the invoice's number.
LINE_COLUMNS = [
    "invoice_number",
    *(
        "plan_version_id" if name == "plan_version" else name
        for name in INVOICE_LINE_FIELDS
        if name not in ("component_key", "tiers")
    ),
]


def invoices_csv(invoices: Iterable[Invoice]) -> str:
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(INVOICE_COLUMNS)
    for inv in invoices:
        credited = sum(c.amount_minor for c in inv.credit_notes.all())
        writer.writerow(
            [
                inv.number or "",
                inv.status,
                inv.tenant_id,
                inv.tenant.name,
                inv.period_start.isoformat(),
                inv.period_end.isoformat(),
                inv.currency,
                inv.subtotal_minor,
                inv.tax_minor,
                inv.total_minor,
                credited,
                inv.issue_date or "",
                inv.due_date or "",
                inv.usage_cutoff_record_id,
                inv.stripe_invoice_id,
            ]
        )
    return out.getvalue()


def invoice_lines_csv(invoices: Iterable[Invoice]) -> str:
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(LINE_COLUMNS)
    for inv in invoices:
        for line in inv.lines.order_by("position"):
            writer.writerow([inv.number or "", *(_cell(line, c) for c in LINE_COLUMNS[1:])])
    return out.getvalue()


def _cell(line: InvoiceLine, column: str) -> Any:
    value = getattr(line, column)
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if column == "aliases":
        return " ".join(value)
    return value
