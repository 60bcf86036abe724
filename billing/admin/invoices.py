"""Invoices (status transitions, credit notes, PDF, Stripe sync) and what belongs to them:
lines, credit notes, numbering sequences, Stripe customers and events (read-only)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from billing import permissions as perm
from billing.admin.base import ReadOnlyAdmin
from billing.invoicing.documents import invoice_pdf
from billing.invoicing.lifecycle import credit_note_issue, invoice_transition
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    StripeCustomer,
    StripeEvent,
)
from billing.stripe import sync_invoice_to_stripe
from config.errors import ApplicationError

INVOICE_LINE_FIELDS_NOT_IN_ADMIN = frozenset(
    {"segment_start", "segment_end", "component_key", "aliases", "billable_tokens", "tiers"}
)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    # The one list of what a line shows, minus what is too wide for a table row (the
    # segment bounds, component key, aliases, billable tokens and tier breakdown are on
    # the API and the CSV export).
    fields = readonly_fields = tuple(
        name for name in INVOICE_LINE_FIELDS if name not in INVOICE_LINE_FIELDS_NOT_IN_ADMIN
    )

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


class CreditNoteInline(admin.TabularInline):
    model = CreditNote
    extra = 0
    can_delete = False
    readonly_fields = ["number", "amount_minor", "reason", "created_at"]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = [
        "number",
        "tenant",
        "period_start",
        "status",
        "currency",
        "total_minor",
        "issue_date",
        "stripe_synced_at",
    ]
    list_filter = ["status", "currency", "period_start"]
    search_fields = ["number", "tenant__name", "stripe_invoice_id"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline, CreditNoteInline]
    readonly_fields = [f.name for f in Invoice._meta.fields]
    actions = ["void", "full_credit_note", "resend_to_stripe", "download_pdf"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_void_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.INVOICE_VOID)

    def has_credit_note_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.CREDIT_NOTE_ISSUE)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.INVOICE_RESEND)

    def has_pdf_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.INVOICE_VIEW)

    def _each(self, request: HttpRequest, queryset: QuerySet[Invoice], action) -> None:  # type: ignore[no-untyped-def]
        for invoice in queryset:
            try:
                action(invoice)
            except ApplicationError as exc:
                self.message_user(request, f"{invoice}: {exc.message}", messages.ERROR)

    @admin.action(description="Void", permissions=["void"])
    def void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(
            request, queryset, lambda i: invoice_transition(invoice=i, to=Invoice.Status.VOID)
        )

    @admin.action(
        description="Issue a credit note for the remaining amount", permissions=["credit_note"]
    )
    def full_credit_note(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(
            request,
            queryset,
            lambda i: credit_note_issue(invoice=i, reason=f"credited by {request.user}"),
        )

    @admin.action(description="Resend to Stripe", permissions=["resend"])
    def resend_to_stripe(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            sync_invoice_to_stripe.delay(invoice.pk)
        self.message_user(request, f"Queued {queryset.count()} invoice(s) for Stripe.")

    @admin.action(description="Download PDF (first selected)", permissions=["pdf"])
    def download_pdf(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        invoice = queryset.first()
        assert invoice is not None
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = (
            f'attachment; filename="{invoice.number or invoice.pk}.pdf"'
        )
        return response


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "type", "status", "created", "received_at", "processed_at"]
    list_filter = ["status", "type"]
    search_fields = ["event_id"]
    readonly_fields = [f.name for f in StripeEvent._meta.fields]


@admin.register(InvoiceLine)
class InvoiceLineAdmin(ReadOnlyAdmin):
    list_display = ["invoice", "position", "kind", "description", "amount_minor"]
    list_filter = ["kind"]
    search_fields = ["invoice__number", "description"]


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "amount_minor", "reason", "created_at"]
    search_fields = ["number", "invoice__number"]


@admin.register(InvoiceSequence)
class InvoiceSequenceAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "year", "last_number"]


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "stripe_customer_id", "synced_at"]
    search_fields = ["tenant__name", "stripe_customer_id"]
