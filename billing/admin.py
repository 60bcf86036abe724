from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html_join

from billing import tasks
from billing.documents import invoice_pdf
from billing.invoicing import credit_note_issue, invoice_transition, period_close
from billing.models import (
    AcceleratorType,
    Alert,
    CalibrationRun,
    CostBasisVersion,
    CreditNote,
    Deployment,
    Invoice,
    InvoiceLine,
    MarginPolicy,
    Plan,
    PlanVersion,
    PriceComponent,
    PriceTier,
    StripeEvent,
    Subscription,
    WebhookEndpoint,
)
from billing.services import plan_version_issues, plan_version_publish
from metering.errors import ApplicationError


def _editable(obj: object) -> bool:
    version = obj.plan_version if isinstance(obj, PriceComponent) else obj
    return not (isinstance(version, PlanVersion) and version.is_published)


class PriceComponentInline(admin.StackedInline):
    model = PriceComponent
    extra = 0
    show_change_link = True  # tiers are edited on the component's own page

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None or _editable(obj)

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission  # type: ignore[assignment]


class PriceTierInline(admin.TabularInline):
    model = PriceTier
    extra = 1

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None or _editable(obj)

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission  # type: ignore[assignment]


def _issues_html(version: PlanVersion) -> str:
    issues = plan_version_issues(version=version)
    if not issues:
        return "No problems found."
    return format_html_join(
        "", "<p><strong>{}</strong> {}: {}</p>", ((i.severity, i.code, i.message) for i in issues)
    )


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "created_at"]
    search_fields = ["code", "name"]


@admin.register(PlanVersion)
class PlanVersionAdmin(admin.ModelAdmin):
    list_display = [
        "plan",
        "version",
        "status",
        "currency",
        "base_fee",
        "minimum_commitment",
        "effective_from",
    ]
    list_filter = ["status", "currency", "plan"]
    inlines = [PriceComponentInline]
    readonly_fields = ["status", "published_at", "validation"]
    actions = ["publish"]

    @admin.display(
        description="Validation (errors block publishing; warnings such as volume cliffs do not)"
    )
    def validation(self, obj: PlanVersion) -> str:
        return _issues_html(obj) if obj.pk else "Save first."

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None or _editable(obj)

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        for issue in plan_version_issues(version=form.instance):
            level = messages.ERROR if issue.severity == "error" else messages.WARNING
            self.message_user(request, f"{issue.code}: {issue.message}", level)

    @admin.action(description="Publish (makes the version immutable)")
    def publish(self, request: HttpRequest, queryset: QuerySet[PlanVersion]) -> None:
        for version in queryset:
            try:
                plan_version_publish(version=version)
            except ApplicationError as exc:
                self.message_user(request, f"{version}: {exc.message} {exc.extra}", messages.ERROR)


@admin.register(PriceComponent)
class PriceComponentAdmin(admin.ModelAdmin):
    list_display = [
        "plan_version",
        "token_class",
        "aliases",
        "charge_model",
        "unit_price",
        "included_tokens",
    ]
    list_filter = ["token_class", "charge_model"]
    inlines = [PriceTierInline]
    readonly_fields = ["validation"]

    @admin.display(description="Validation of the whole plan version")
    def validation(self, obj: PriceComponent) -> str:
        return _issues_html(obj.plan_version) if obj.pk else "Save first."

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None or _editable(obj)

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        for issue in plan_version_issues(version=form.instance.plan_version):
            level = messages.ERROR if issue.severity == "error" else messages.WARNING
            self.message_user(request, f"{issue.code}: {issue.message}", level)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["tenant", "plan_version", "starts_at", "ends_at", "anchor_day"]
    list_filter = ["plan_version__plan"]
    search_fields = ["tenant__name"]
    readonly_fields = ["previous"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "position",
        "kind",
        "description",
        "plan_version",
        "token_class",
        "tokens",
        "reasoning_tokens",
        "allowance_tokens",
        "quantity",
        "amount_exact",
        "amount_minor",
        "adjusts_period_start",
        "usage_cutoff_record_id",
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
    actions = ["finalize", "void", "full_credit_note", "resend_to_stripe", "download_pdf"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def _each(self, request: HttpRequest, queryset: QuerySet[Invoice], action) -> None:  # type: ignore[no-untyped-def]
        for invoice in queryset:
            try:
                action(invoice)
            except ApplicationError as exc:
                self.message_user(request, f"{invoice}: {exc.message}", messages.ERROR)

    @admin.action(description="Finalize drafts (close their period now)")
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(
            request,
            queryset.filter(status=Invoice.Status.DRAFT),
            lambda i: period_close(
                tenant_id=i.tenant_id,
                period_start=i.period_start,
                enforce_grace=False,
            ),
        )

    @admin.action(description="Void")
    def void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(
            request, queryset, lambda i: invoice_transition(invoice=i, to=Invoice.Status.VOID)
        )

    @admin.action(description="Issue a credit note for the remaining amount")
    def full_credit_note(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(
            request,
            queryset,
            lambda i: credit_note_issue(invoice=i, reason=f"credited by {request.user}"),
        )

    @admin.action(description="Resend to Stripe")
    def resend_to_stripe(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            tasks.sync_invoice_to_stripe.delay(invoice.pk)
        self.message_user(request, f"Queued {queryset.count()} invoice(s) for Stripe.")

    @admin.action(description="Download PDF (first selected)")
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


class CostBasisInline(admin.TabularInline):
    model = CostBasisVersion
    extra = 0
    can_delete = False
    readonly_fields = [
        "version",
        "mode",
        "hourly_usd",
        "purchase_price_usd",
        "amortization_years",
        "power_usd_per_kwh",
        "pue",
        "other_opex_per_hour",
        "effective_from",
        "note",
    ]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # a new version goes through the API or a service, never an edit


class MarginPolicyInline(admin.TabularInline):
    model = MarginPolicy
    extra = 0
    can_delete = False
    readonly_fields = ["target_margin", "minimum_margin", "effective_from"]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(AcceleratorType)
class AcceleratorTypeAdmin(admin.ModelAdmin):
    list_display = ["key", "vendor", "memory_gb", "tdp_watts"]
    list_filter = ["vendor"]
    search_fields = ["key", "example_model"]
    inlines = [CostBasisInline, MarginPolicyInline]
    readonly_fields = ["key", "vendor", "memory_gb", "tdp_watts", "example_model", "source"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = [
        "alias",
        "version",
        "accelerator",
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "utilization",
        "effective_from",
    ]
    list_filter = ["accelerator"]
    search_fields = ["alias"]
    readonly_fields = [f.name for f in Deployment._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


@admin.register(CalibrationRun)
class CalibrationRunAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "model",
        "base_url",
        "concurrency",
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "ttft_p50_ms",
    ]
    readonly_fields = [f.name for f in CalibrationRun._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["tenant", "url", "masked_secret", "thresholds", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["tenant__name", "url"]

    @admin.display(description="Secret")
    def masked_secret(self, obj: WebhookEndpoint) -> str:
        # enough to tell secrets apart, never enough to sign with
        return f"{obj.secret[:4]}…" if len(obj.secret) >= 16 else "…"


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "budget",
        "period",
        "threshold",
        "used",
        "limit",
        "unit",
        "delivery",
        "attempts",
        "delivered_at",
    ]
    list_filter = ["delivery", "budget"]
    search_fields = ["tenant__name", "budget", "event_id"]
    readonly_fields = [f.name for f in Alert._meta.fields]
    actions = ["redeliver"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # deleting an alert would let it fire again

    @admin.action(description="Redeliver failed or pending alerts")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        ids = list(
            queryset.filter(
                delivery__in=[Alert.Delivery.FAILED, Alert.Delivery.PENDING]
            ).values_list("pk", flat=True)
        )
        for alert_id in ids:
            tasks.alert_deliver_task.delay(alert_id)
        self.message_user(request, f"Queued {len(ids)} alert(s) for delivery.")
