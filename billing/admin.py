from decimal import Decimal

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html_join

from billing import permissions as perm
from billing.alert_delivery import alert_deliver_task
from billing.balances import BalanceState, available_at, balance_state, credits_of
from billing.invoicing.documents import invoice_pdf
from billing.invoicing.lifecycle import credit_note_issue, invoice_transition
from billing.invoicing.lines import INVOICE_LINE_FIELDS
from billing.models import (
    AcceleratorType,
    Alert,
    BalanceAccount,
    BalanceEntry,
    CalibrationRun,
    CostBasisVersion,
    CreditNote,
    Deployment,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    MarginPolicy,
    Plan,
    PlanVersion,
    PriceComponent,
    PriceTier,
    StripeCustomer,
    StripeEvent,
    Subscription,
    WebhookEndpoint,
)
from billing.plans import plan_version_issues, plan_version_publish
from billing.stripe import sync_invoice_to_stripe
from config.errors import ApplicationError


def _editable(obj: object) -> bool:
    """Whether a plan version (or a component of one) may still change: not once published.
    Model permissions apply on top: this never grants what the user's permissions do not."""
    version = obj.plan_version if isinstance(obj, PriceComponent) else obj
    return not (isinstance(version, PlanVersion) and version.is_published)


class _EditableWhileDraft:
    """An inline of a plan version's prices: read-only once the version is published."""

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return _editable(obj) and super().has_change_permission(request, obj)

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return _editable(obj) and super().has_add_permission(request, obj)

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return _editable(obj) and super().has_delete_permission(request, obj)


class PriceComponentInline(_EditableWhileDraft, admin.StackedInline):
    model = PriceComponent
    extra = 0
    show_change_link = True  # tiers are edited on the component's own page


class PriceTierInline(_EditableWhileDraft, admin.TabularInline):
    model = PriceTier
    extra = 1


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
        return _editable(obj) and super().has_change_permission(request, obj)

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        for issue in plan_version_issues(version=form.instance):
            level = messages.ERROR if issue.severity == "error" else messages.WARNING
            self.message_user(request, f"{issue.code}: {issue.message}", level)

    def has_publish_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.PLAN_VERSION_PUBLISH)

    @admin.action(description="Publish (makes the version immutable)", permissions=["publish"])
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
        return _editable(obj) and super().has_change_permission(request, obj)

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

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.ALERT_REDELIVER)

    @admin.action(description="Redeliver failed or pending alerts", permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        ids = list(
            queryset.filter(
                delivery__in=[Alert.Delivery.FAILED, Alert.Delivery.PENDING]
            ).values_list("pk", flat=True)
        )
        for alert_id in ids:
            alert_deliver_task.delay(alert_id)
        self.message_user(request, f"Queued {len(ids)} alert(s) for delivery.")


# --- prepaid balances ------------------------------------------------------------------

BALANCE_ENTRY_FIELDS = (
    "kind",
    "amount",
    "effective_at",
    "expires_at",
    "credit",
    "invoice",
    "description",
    "idempotency_key",
    "created_at",
)


class BalanceEntryInline(admin.TabularInline):
    model = BalanceEntry
    fk_name = "account"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = BALANCE_ENTRY_FIELDS

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).select_related("account", "credit__account", "invoice")

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # the ledger is append-only and written by services

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


def _state(account: BalanceAccount) -> BalanceState | None:
    """The account's position, read once per page (three fields show parts of it)."""
    if "_balance_state" not in account.__dict__:
        account.__dict__["_balance_state"] = balance_state(account.tenant_id)
    return account.__dict__["_balance_state"]


@admin.register(BalanceAccount)
class BalanceAccountAdmin(admin.ModelAdmin):
    """A tenant's prepaid balance and its ledger, read-only except `hard_stop` (and that
    only with `billing.change_hard_stop`).

    Credits are never added here: a top-up or grant goes through
    `POST /api/v1/tenants/<tenant id>/credits` (or `billing.balances.balance_credit`), which
    validates it, makes it idempotent and opens the balance on the first credit; `PATCH
    /api/v1/tenants/<tenant id>/balance` opens a balance without a credit."""

    list_display = ["tenant", "currency", "hard_stop", "available", "created_at"]
    list_filter = ["hard_stop", "currency"]
    search_fields = ["tenant__name"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "tenant",
        "currency",
        "created_at",
        "available",
        "uninvoiced_spend",
        "remaining",
        "watermark",
    ]
    inlines = [BalanceEntryInline]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm(perm.HARD_STOP_CHANGE):
            fields.append("hard_stop")  # it decides whether calls are refused
        return fields

    @admin.display(description="Available now")
    def available(self, obj: BalanceAccount) -> Decimal:
        # credits usable now, net of what invoices consumed (one query per row)
        return available_at(credits_of([obj.pk]), timezone.now())

    @admin.display(description="Uninvoiced spend (list price)")
    def uninvoiced_spend(self, obj: BalanceAccount) -> Decimal | None:
        state = _state(obj)
        return state.uninvoiced_spend if state else None

    @admin.display(description="Remaining (available - uninvoiced spend)")
    def remaining(self, obj: BalanceAccount) -> Decimal | None:
        state = _state(obj)
        return state.remaining if state else None

    @admin.display(description="Invoiced through")
    def watermark(self, obj: BalanceAccount) -> str:
        state = _state(obj)
        return str(state.watermark) if state and state.watermark else "no invoice yet"

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # opened by the API or balance_account_open, never by hand

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(BalanceEntry)
class BalanceEntryAdmin(admin.ModelAdmin):
    """The balance ledger, read-only: it is append-only, and every entry is written by a
    service (credits by `balance_credit`, draws by period closes, expiries, reversals)."""

    list_display = [
        "created_at",
        "tenant",
        "kind",
        "amount",
        "currency",
        "effective_at",
        "expires_at",
        "credit",
        "invoice",
        "idempotency_key",
    ]
    list_filter = ["kind"]
    search_fields = ["account__tenant__name", "idempotency_key"]
    list_select_related = ["account__tenant", "credit__account", "invoice"]
    readonly_fields = ["account", *BALANCE_ENTRY_FIELDS]

    @admin.display(description="Tenant", ordering="account__tenant__name")
    def tenant(self, obj: BalanceEntry) -> str:
        return str(obj.account.tenant)

    @admin.display(description="Currency")
    def currency(self, obj: BalanceEntry) -> str:
        return obj.account.currency

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that services write and the admin only shows (their parents' pages edit them
    where editing is allowed)."""

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(PriceTier)
class PriceTierAdmin(ReadOnlyAdmin):
    list_display = ["component", "position", "up_to", "unit_price", "flat_fee"]


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


@admin.register(CostBasisVersion)
class CostBasisVersionAdmin(ReadOnlyAdmin):
    list_display = ["accelerator", "version", "mode", "hourly_usd"]
    list_filter = ["mode"]


@admin.register(MarginPolicy)
class MarginPolicyAdmin(ReadOnlyAdmin):
    list_display = ["accelerator", "target_margin", "minimum_margin", "effective_from"]
