"""REST views for invoices (tenants read their own; finance staff read all), credit
notes, recomputation, PDF and CSV exports, and the Stripe webhook endpoint."""

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import permissions as perm
from api.authentication import TenantPrincipal
from api.serializers import MAX_BIGINT, PeriodField, validated_query
from billing import tasks
from billing.invoicing.documents import invoice_lines_csv, invoice_pdf, invoices_csv
from billing.invoicing.lifecycle import credit_note_issue
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.invoicing.recompute import invoice_recompute
from billing.models import CreditNote, Invoice, InvoiceLine, StripeEvent
from billing.stripe import stripe_event_receive


class InvoiceQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=Invoice.Status.choices, required=False)
    period = PeriodField(required=False, help_text="YYYY-MM: invoices whose period starts in it")
    tenant = serializers.UUIDField(required=False, help_text="staff only")


class InvoiceExportQuery(InvoiceQuery):
    period = PeriodField(help_text="YYYY-MM: invoices whose period starts in it")
    kind = serializers.ChoiceField(choices=["invoices", "lines"], default="invoices")


def invoices_visible(request: Request, query: dict[str, Any]) -> QuerySet[Invoice]:
    qs = Invoice.objects.select_related("tenant").prefetch_related("credit_notes")
    if isinstance(request.user, TenantPrincipal):
        return qs.filter(tenant=request.user.tenant)
    if perm.staff_permission_granted(request):
        if tenant := query.get("tenant"):
            qs = qs.filter(tenant_id=tenant)
        return qs
    return qs.none()


def filter_invoices(qs: QuerySet[Invoice], query: dict[str, Any]) -> QuerySet[Invoice]:
    if value := query.get("status"):
        qs = qs.filter(status=value)
    if period := query.get("period"):
        qs = qs.filter(period_start__gte=period.start, period_start__lt=period.end)
    return qs


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


class FileDownloadView(APIView):
    """A view answering a file (PDF, CSV): a client that accepts only that file's type
    is served, not refused with 406; errors still answer JSON."""

    def perform_content_negotiation(self, request: Request, force: bool = False):  # type: ignore[no-untyped-def]
        return super().perform_content_negotiation(request, force=True)


def _invoice(request: Request, invoice_id: int) -> Invoice:
    invoice = invoices_visible(request, {}).filter(pk=invoice_id).first()
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice


class InvoiceListView(ListAPIView):
    serializer_class = InvoiceOutput
    permission_classes = [perm.tenant_or_staff(GET=perm.INVOICE_VIEW)]

    @extend_schema(parameters=[InvoiceQuery])
    def get(self, request: Request, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Invoice]:
        query = validated_query(InvoiceQuery, self.request)
        return filter_invoices(invoices_visible(self.request, query), query)


class InvoiceDetailView(APIView):
    permission_classes = [perm.tenant_or_staff(GET=perm.INVOICE_VIEW)]

    @extend_schema(responses=InvoiceDetailOutput)
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = _invoice(request, invoice_id)
        return Response(InvoiceDetailOutput(invoice).data)


class InvoicePdfView(FileDownloadView):
    permission_classes = [perm.tenant_or_staff(GET=perm.INVOICE_VIEW)]

    @extend_schema(responses={(200, "application/pdf"): bytes})
    def get(self, request: Request, invoice_id: int) -> HttpResponse:
        invoice = _invoice(request, invoice_id)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        name = invoice.number or f"draft-{invoice.pk}"
        response["Content-Disposition"] = f'attachment; filename="{name}.pdf"'
        return response


class InvoiceExportView(FileDownloadView):
    """CSV of invoices (or, with kind=lines, their lines) for one month of periods."""

    permission_classes = [perm.tenant_or_staff(GET=perm.INVOICE_EXPORT)]

    @extend_schema(parameters=[InvoiceExportQuery], responses={(200, "text/csv"): str})
    def get(self, request: Request) -> HttpResponse:
        query = validated_query(InvoiceExportQuery, request)
        invoices = filter_invoices(invoices_visible(request, query), query).order_by("number", "id")
        kind = query["kind"]
        body = invoices_csv(invoices) if kind == "invoices" else invoice_lines_csv(invoices)
        response = HttpResponse(body, content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="{kind}-{query["period"].start:%Y-%m}.csv"'
        )
        return response


class InvoiceRecomputeView(APIView):
    permission_classes = [perm.staff_only(GET=perm.INVOICE_VIEW)]

    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = _invoice(request, invoice_id)
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


class CreditNoteInput(serializers.Serializer):
    amount_minor = serializers.IntegerField(
        min_value=1, max_value=MAX_BIGINT, required=False, help_text="omit for a full credit"
    )
    reason = serializers.CharField(max_length=300)


class CreditNoteCreateView(APIView):
    permission_classes = [perm.staff_only(POST=perm.CREDIT_NOTE_ISSUE)]

    @extend_schema(request=CreditNoteInput, responses=CreditNoteOutput)
    def post(self, request: Request, invoice_id: int) -> Response:
        body = CreditNoteInput(data=request.data)
        body.is_valid(raise_exception=True)
        note = credit_note_issue(
            invoice=_invoice(request, invoice_id),
            reason=body.validated_data["reason"],
            amount_minor=body.validated_data.get("amount_minor"),
        )
        return Response(CreditNoteOutput(note).data, status=status.HTTP_201_CREATED)


@method_decorator(csrf_exempt, name="dispatch")
class StripeWebhookView(APIView):
    """Stripe calls this; the signature is the authentication."""

    authentication_classes: list = []  # type: ignore[type-arg]
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        event, created = stripe_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
        if event.status in (StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED):
            transaction.on_commit(lambda: tasks.process_stripe_event.delay(event.pk))
        # 200 for a rejected (malformed) event too: Stripe retries anything else forever.
        return Response(
            {
                "received": True,
                "event": event.event_id,
                "duplicate": not created,
                "status": event.status,
            }
        )
