from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.errors import ApplicationError
from metering import permissions as perm
from metering.models import (
    ApiKey,
    HoldCap,
    LedgerArchive,
    RateLimit,
    ReasoningPolicy,
    Route,
    ServingCostRate,
    SpendLimit,
    Tenant,
    UsageRecord,
    UsageRollup,
)
from metering.routes import base_url_normalize
from metering.services import api_key_create, api_key_revoke, route_warnings


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "id"]
    filter_horizontal = ["allowed_routes"]
    actions = ["issue_api_key"]

    def has_issue_key_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.APIKEY_ISSUE)

    @admin.action(description="Issue a new API key (shown once)", permissions=["issue_key"])
    def issue_api_key(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            created = api_key_create(tenant=tenant, name="admin")
            self.message_user(
                request,
                f"New key for {tenant.name} (copy it now, it is not shown again): {created.raw_key}",
                messages.WARNING,
            )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "tenant",
        "name",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "tenant__name"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at", "tenant"]
    fields = [
        "tenant",
        "name",
        "prefix",
        "key_hash",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued from the tenant page, so the raw key can be shown once

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm.APIKEY_REVOKE)

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


class RouteAdminForm(forms.ModelForm):
    """The base URL is normalized (or refused) by the same rule as `route_set`: a plain
    text field, so Django's URL validator (which refuses hosts like `vllm:8000`) does not
    judge it first."""

    base_url = forms.CharField(
        max_length=500,
        help_text="openai: https://api.openai.com/v1; anthropic: https://api.anthropic.com; "
        "openai-compatible: the URL its OpenAI SDK clients use, e.g. http://HOST:8000/v1",
    )

    class Meta:
        model = Route
        fields = [
            "alias",
            "provider",
            "base_url",
            "upstream_model",
            "api_key_env",
            "accelerator",
            "is_active",
        ]

    def _get_validation_exclusions(self) -> set[str]:
        # The model's URLField validator would judge the normalized URL again and refuse
        # hosts without a dot (`http://vllm:8000/v1`); `base_url_normalize` is the rule.
        return super()._get_validation_exclusions() | {"base_url"}  # type: ignore[misc]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        provider, base_url = cleaned.get("provider"), cleaned.get("base_url")
        if provider and base_url:
            try:
                cleaned["base_url"] = base_url_normalize(provider=provider, base_url=base_url).url
            except ApplicationError as exc:
                self.add_error("base_url", exc.message)
        return cleaned


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    form = RouteAdminForm
    list_display = ["alias", "provider", "base_url", "upstream_model", "accelerator", "is_active"]
    list_filter = ["provider", "accelerator", "is_active"]
    search_fields = ["alias", "upstream_model"]

    def save_model(self, request: HttpRequest, obj: Route, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        for warning in route_warnings(route=obj):
            self.message_user(request, warning, messages.WARNING)


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "started_at",
        "tenant",
        "alias",
        "endpoint",
        "stream",
        "status",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "reasoning_source",
        "client_disconnected",
    ]
    list_filter = [
        "status",
        "endpoint",
        "stream",
        "reasoning_source",
        "provider",
        "accelerator",
        "client_disconnected",
        "tenant",
    ]
    search_fields = ["request_id", "upstream_response_id", "alias", "tenant__name"]
    date_hierarchy = "started_at"
    list_select_related = ["tenant"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ServingCostRate)
class ServingCostRateAdmin(admin.ModelAdmin):
    list_display = [
        "alias",
        "accelerator",
        "effective_from",
        "input_usd",
        "output_usd",
        "reasoning_usd",
    ]
    list_filter = ["accelerator"]
    search_fields = ["alias"]
    readonly_fields = [f.name for f in ServingCostRate._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SpendLimit)
class SpendLimitAdmin(admin.ModelAdmin):
    """Takes effect on every server process within RECKON_AUTH_CACHE_SECONDS."""

    list_display = ["tenant", "api_key", "window", "amount_usd", "created_at"]
    list_filter = ["window"]
    search_fields = ["tenant__name", "api_key__prefix"]
    raw_id_fields = ["api_key"]


@admin.register(RateLimit)
class RateLimitAdmin(admin.ModelAdmin):
    list_display = ["tenant", "api_key", "requests_per_minute", "tokens_per_minute"]
    search_fields = ["tenant__name", "api_key__prefix"]
    raw_id_fields = ["api_key"]


@admin.register(ReasoningPolicy)
class ReasoningPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "api_key",
        "allowed_efforts",
        "default_max_output_tokens",
        "max_output_tokens",
        "monthly_reasoning_tokens",
        "mode",
    ]
    list_filter = ["mode"]
    search_fields = ["api_key__prefix", "api_key__tenant__name"]
    raw_id_fields = ["api_key"]


@admin.register(HoldCap)
class HoldCapAdmin(admin.ModelAdmin):
    """Learned by metering.tasks.learn_hold_caps; read-only here."""

    list_display = ["alias", "tenant", "p99_output_tokens", "samples", "computed_at"]
    search_fields = ["alias", "tenant__name"]
    readonly_fields = [f.name for f in HoldCap._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    """Hourly sums kept by the ledger's own statement; read-only."""

    list_display = [
        "tenant",
        "alias",
        "accelerator",
        "api_key_id",
        "provider_account_id",
        "upstream_model",
        "hour",
        "shard",
        "requests",
        "flagged_requests",
        "unanswered_requests",
        "spend_usd",
    ]
    list_filter = ["accelerator"]
    search_fields = ["tenant__name", "alias", "upstream_model"]
    date_hierarchy = "hour"
    readonly_fields = [f.name for f in UsageRollup._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(LedgerArchive)
class LedgerArchiveAdmin(admin.ModelAdmin):
    """Archived ledger months (metering.ledger.archive); read-only: the archive and
    restore commands and the retention task are the only writers."""

    list_display = [
        "month",
        "state",
        "rows",
        "location",
        "exported_at",
        "verified_at",
        "dropped_at",
        "restored_at",
    ]
    list_filter = ["state"]
    date_hierarchy = "month"
    readonly_fields = [f.name for f in LedgerArchive._meta.fields]

    @admin.display(description="records")
    def rows(self, obj: LedgerArchive) -> int:
        return int(obj.manifest.get("rows", 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
