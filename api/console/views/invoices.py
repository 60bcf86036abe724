"""Console pages for invoices and the prepaid balance (INVOICES_VIEW: owners and billing).

Each page shows what the REST API returns for the same question, built by the same
serializers from the same rows, scoped to `member.tenant`:
- the list = GET /api/v1/invoices (InvoiceOutput, newest first);
- the detail = GET /api/v1/invoices/<id> (InvoiceDetailOutput: lines with their tiers,
  credit notes, Stripe status); the PDF = GET /api/v1/invoices/<id>/pdf;
- the balance = GET /api/v1/balance (balance_data) and its entries = GET
  /api/v1/balance/entries (BalanceEntryOutput, newest first).
Another tenant's invoice id is a 404, as in the API. Money is shown from minor units or
exact decimal strings, never through a float."""

from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from api.console.access import INVOICES_VIEW, member_page
from api.console.views.common import page
from api.console.views.paging import before_of, newest_page
from api.serializers.balances import BalanceEntryOutput, balance_data
from api.serializers.invoices import InvoiceDetailOutput, InvoiceOutput
from billing.balances import balance_state, credits_of
from billing.invoicing.documents import invoice_pdf as invoice_pdf_bytes
from billing.models import BalanceAccount, BalanceEntry, Invoice
from config.db_router import reporting_reads
from metering.models import TenantMember


def _invoices_of(member: TenantMember) -> QuerySet[Invoice]:
    """The tenant's invoices as the REST list reads them (a tenant key's view)."""
    return (
        Invoice.objects.filter(tenant=member.tenant)
        .select_related("tenant")
        .prefetch_related("credit_notes")
    )


def _invoice_or_404(member: TenantMember, invoice_id: int) -> Invoice:
    invoice = _invoices_of(member).prefetch_related("lines").filter(pk=invoice_id).first()
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


@require_GET
@member_page(INVOICES_VIEW)
@reporting_reads()
def invoice_list(request: HttpRequest, member: TenantMember) -> HttpResponse:
    invoices, more = newest_page(_invoices_of(member), request)
    return page(
        request,
        "console/invoices.html",
        {
            "invoices": InvoiceOutput(invoices, many=True).data,
            "more": more,
            "first_page": before_of(request) is None,
        },
    )


@require_GET
@member_page(INVOICES_VIEW)
def invoice_detail(request: HttpRequest, member: TenantMember, invoice_id: int) -> HttpResponse:
    data = InvoiceDetailOutput(_invoice_or_404(member, invoice_id)).data
    credited = sum(note["amount_minor"] for note in data["credit_notes"])
    return page(
        request,
        "console/invoice_detail.html",
        {"invoice": data, "credited_minor": credited, "net_minor": data["total_minor"] - credited},
    )


@require_GET
@member_page(INVOICES_VIEW)
def invoice_pdf(request: HttpRequest, member: TenantMember, invoice_id: int) -> HttpResponse:
    invoice = _invoice_or_404(member, invoice_id)
    response = HttpResponse(invoice_pdf_bytes(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response


@require_GET
@member_page(INVOICES_VIEW)
def balance(request: HttpRequest, member: TenantMember) -> HttpResponse:
    account = BalanceAccount.objects.filter(tenant=member.tenant).first()
    context: dict[str, Any] = {"balance": None, "entries": [], "more": None}
    if account is not None:
        state = balance_state(member.tenant.pk)
        assert state is not None  # accounts are never deleted (PROTECT)
        entries, more = newest_page(
            BalanceEntry.objects.filter(account=account).select_related("invoice"), request
        )
        context = {
            "balance": balance_data(state, credits_of([account.pk])),
            "entries": BalanceEntryOutput(entries, many=True).data,
            "more": more,
            "first_page": before_of(request) is None,
        }
    return page(request, "console/balance.html", context)
