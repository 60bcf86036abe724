"""Plans, their versions, price components and tiers, and subscriptions: editable while a
version is a draft, read-only once published (a published price never changes)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from billing import permissions as perm
from billing.admin.base import ReadOnlyAdmin
from billing.models import (
    Plan,
    PlanVersion,
    PriceComponent,
    PriceTier,
    Subscription,
)
from billing.plans import plan_version_issues, plan_version_publish
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


@admin.register(PriceTier)
class PriceTierAdmin(ReadOnlyAdmin):
    list_display = ["component", "position", "up_to", "unit_price", "flat_fee"]
