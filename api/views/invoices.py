"""REST views for invoices (tenants read their own; finance staff read all), the live
preview of the current period, credit notes, recomputation, and PDF and CSV exports."""

from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.authentication import TenantPrincipal
from api.permissions import (
    BILLING_SCOPE,
    staff_only,
    staff_permission_granted,
    tenant_or_staff,
)
from api.scoping import tenant_id_for
from api.serializers.fields import validated_body, validated_query
from api.serializers.invoices import (
    CreditNoteInput,
    CreditNoteOutput,
    InvoiceDetailOutput,
    InvoiceExportQuery,
    InvoiceOutput,
    InvoiceQuery,
    period_rating_data,
)
from api.views.downloads import FileDownloadView
from billing.invoicing.documents import invoice_lines_csv, invoice_pdf, invoices_csv
from billing.invoicing.lifecycle import credit_note_issue
from billing.invoicing.recompute import invoice_recompute
from billing.models import Invoice
from billing.period_rating import invoice_preview
from billing.permissions import CREDIT_NOTE_ISSUE, INVOICE_EXPORT, INVOICE_VIEW
from config.db_router import reporting_reads


def _invoices_visible(request: Request, query: dict[str, Any]) -> QuerySet[Invoice]:
    """A tenant key's own invoices; staff's of every tenant, or of the one asked for."""
    qs = Invoice.objects.select_related("tenant").prefetch_related("credit_notes")
    if isinstance(request.user, TenantPrincipal):
        return qs.filter(tenant=request.user.tenant)
    if staff_permission_granted(request):
        if tenant := query.get("tenant"):
            qs = qs.filter(tenant_id=tenant)
        return qs
    return qs.none()


def _invoices_filtered(qs: QuerySet[Invoice], query: dict[str, Any]) -> QuerySet[Invoice]:
    if value := query.get("status"):
        qs = qs.filter(status=value)
    if period := query.get("period"):
        qs = qs.filter(period_start__gte=period.start, period_start__lt=period.end)
    return qs


def _invoice_or_404(request: Request, invoice_id: int) -> Invoice:
    invoice = _invoices_visible(request, {}).filter(pk=invoice_id).first()
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice


@extend_schema_view(get=extend_schema(parameters=[InvoiceQuery]))
class InvoiceListView(ListAPIView):
    serializer_class = InvoiceOutput
    permission_classes = [tenant_or_staff(GET=INVOICE_VIEW, key_scope=BILLING_SCOPE)]

    @reporting_reads()
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Invoice]:
        query = validated_query(InvoiceQuery, self.request)
        return _invoices_filtered(_invoices_visible(self.request, query), query)


class InvoiceDetailView(APIView):
    permission_classes = [tenant_or_staff(GET=INVOICE_VIEW, key_scope=BILLING_SCOPE)]

    @extend_schema(responses=InvoiceDetailOutput)
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = _invoice_or_404(request, invoice_id)
        return Response(InvoiceDetailOutput(invoice).data)


class UpcomingInvoiceView(APIView):
    permission_classes = [tenant_or_staff(GET=INVOICE_VIEW, key_scope=BILLING_SCOPE)]

    @extend_schema(summary="The current period's rated lines and totals, live")
    def get(self, request: Request) -> Response:
        return Response(period_rating_data(invoice_preview(tenant_id=tenant_id_for(request))))


class InvoicePdfView(FileDownloadView):
    permission_classes = [tenant_or_staff(GET=INVOICE_VIEW, key_scope=BILLING_SCOPE)]

    @extend_schema(responses={(200, "application/pdf"): bytes})
    def get(self, request: Request, invoice_id: int) -> HttpResponse:
        invoice = _invoice_or_404(request, invoice_id)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
        return response


class InvoiceExportView(FileDownloadView):
    """CSV of invoices (or, with kind=lines, their lines) for one month of periods."""

    permission_classes = [tenant_or_staff(GET=INVOICE_EXPORT, key_scope=BILLING_SCOPE)]

    @extend_schema(parameters=[InvoiceExportQuery], responses={(200, "text/csv"): str})
    @reporting_reads()
    def get(self, request: Request) -> HttpResponse:
        query = validated_query(InvoiceExportQuery, request)
        invoices = _invoices_filtered(_invoices_visible(request, query), query).order_by(
            "number", "id"
        )
        kind = query["kind"]
        body = invoices_csv(invoices) if kind == "invoices" else invoice_lines_csv(invoices)
        response = HttpResponse(body, content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="{kind}-{query["period"].start:%Y-%m}.csv"'
        )
        return response


class InvoiceRecomputeView(APIView):
    permission_classes = [staff_only(GET=INVOICE_VIEW)]

    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = _invoice_or_404(request, invoice_id)
        differences = invoice_recompute(invoice=invoice)
        return Response(
            {
                "invoice": invoice.pk,
                "number": invoice.number,
                "reproducible": not differences,
                "differences": [
                    {
                        "position": d.position,
                        "field": d.field,
                        "invoiced": str(d.invoiced),
                        "recomputed": str(d.recomputed),
                    }
                    for d in differences
                ],
            }
        )


class CreditNoteCreateView(APIView):
    permission_classes = [staff_only(POST=CREDIT_NOTE_ISSUE)]

    @extend_schema(request=CreditNoteInput, responses=CreditNoteOutput)
    def post(self, request: Request, invoice_id: int) -> Response:
        body = validated_body(CreditNoteInput, request)
        note = credit_note_issue(
            invoice=_invoice_or_404(request, invoice_id),
            reason=body["reason"],
            amount_minor=body.get("amount_minor"),
        )
        return Response(CreditNoteOutput(note).data, status=status.HTTP_201_CREATED)
