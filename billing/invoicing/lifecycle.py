"""An issued invoice's lifecycle: status transitions (finalized -> paid | void |
uncollectible; uncollectible -> paid | void), payment failures, and credit notes.
Transitions never move backwards, so events arriving out of order cannot undo a terminal
state; nothing billed is edited: money corrections are credit notes."""

from datetime import datetime
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.balances import credits_restore
from billing.invoicing.numbering import next_number
from billing.models import CreditNote, Invoice, InvoiceLine
from billing.stripe import void_invoice_in_stripe
from config.errors import ApplicationError, Conflict

Status = Invoice.Status
Kind = InvoiceLine.Kind

_ALLOWED = {
    Status.FINALIZED: {Status.PAID, Status.VOID, Status.UNCOLLECTIBLE},
    Status.UNCOLLECTIBLE: {Status.PAID, Status.VOID},
}


@transaction.atomic
def invoice_transition(*, invoice: Invoice, to: str, at: datetime | None = None) -> Invoice:
    """Move a finalized invoice along its lifecycle. Idempotent; never moves backwards
    (so events that arrive out of order cannot undo a terminal state)."""
    at = at or timezone.now()
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status == to:
        return invoice
    if to not in _ALLOWED.get(Status(invoice.status), set()):
        raise Conflict(f"Invoice {invoice} is {invoice.status}; it cannot become {to}.")
    if to == Status.VOID:
        adjusting = (
            InvoiceLine.objects.filter(
                kind=Kind.ADJUSTMENT,
                adjusts_period_start=invoice.period_start,
                invoice__tenant_id=invoice.tenant_id,
            )
            .exclude(invoice__status=Status.VOID)
            .values_list("invoice__number", flat=True)
        )
        later = sorted({n for n in adjusting if n})
        if later:
            raise Conflict(
                f"Later invoices ({', '.join(later)}) bill adjustments for this "
                "period; re-issuing it would bill that usage twice. Issue a credit note instead."
            )
    invoice.status = to
    if to == Status.PAID:
        invoice.paid_at = at
    elif to == Status.VOID:
        invoice.voided_at = at
    invoice.save(update_fields=["status", "paid_at", "voided_at"])
    if to == Status.VOID:
        credits_restore(invoice=invoice)  # the re-issued invoice draws on them again
    if to == Status.VOID and invoice.stripe_invoice_id and settings.STRIPE_API_KEY:
        transaction.on_commit(partial(void_invoice_in_stripe.delay, invoice.pk))
    return invoice


@transaction.atomic
def invoice_record_payment_failure(*, invoice: Invoice, at: datetime) -> Invoice:
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.payment_failed_at is None or invoice.payment_failed_at < at:
        invoice.payment_failed_at = at
        invoice.save(update_fields=["payment_failed_at"])
    return invoice


@transaction.atomic
def credit_note_issue(
    *, invoice: Invoice, reason: str, amount_minor: int | None = None
) -> CreditNote:
    """Credit all (amount None) or part of a finalized invoice, never more than is left."""
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status == Status.VOID:
        raise Conflict("Only a finalized, unvoided invoice can be credited.")
    credited = invoice.credit_notes.aggregate(total=Sum("amount_minor"))["total"] or 0
    remaining = invoice.total_minor - credited
    amount = remaining if amount_minor is None else amount_minor
    if amount <= 0 or amount > remaining:
        raise ApplicationError(
            f"A credit must be between 1 and {remaining} minor units for this invoice."
        )
    if not reason.strip():
        raise ApplicationError("A credit note needs a reason.")
    number = next_number(prefix=settings.RECKON_CREDIT_NOTE_PREFIX, year=timezone.now().year)
    return CreditNote.objects.create(
        invoice=invoice, number=number, amount_minor=amount, reason=reason
    )
