from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from config.errors import ApplicationError
from config.forms import URL_FORMFIELD_OVERRIDES, url_formfield
from metering import permissions as perm
from metering.models import (
    Alias,
    ApiKey,
    HoldCap,
    LedgerArchive,
    ProviderAccount,
    ProviderBucketRevision,
    ProviderCostBucket,
    ProviderReportFetch,
    ProviderUsageBucket,
    RateLimit,
    ReasoningPolicy,
    ReconciliationRow,
    Route,
    RouteExpectation,
    RouteLatencyBucket,
    RouteTargetHour,
    ServingCostRate,
    SpendLimit,
    Tenant,
    TenantMember,
    UpstreamKeyPeriod,
    UsageRecord,
    UsageRollup,
)
from metering.providers.accounts import (
    account_provider_change_check,
    admin_base_url_validate,
    admin_key_env_validate,
    model_map_validate,
)
from metering.routes import base_url_normalize
from metering.routing.breaker import BreakerStates, breaker_states
from metering.routing.panel import economics_panel
from metering.routing.rules import parse_rules, rules_as_json, rules_unknown_targets
from metering.services import (
    alias_warnings,
    api_key_create,
    api_key_revoke,
    route_key_history_seed,
    route_key_period_record,
    route_target_leave_check,
    route_warnings,
    route_wire_family_check,
    target_name_check,
    wire_family,
)


class TenantMemberForm(forms.ModelForm):
    """A console member: one tenant per user (the one-to-one), never a staff user (staff act
    through their roles), as `tenant_member_set` refuses. Passwords are set by
    `manage.py tenant_member_set --reset-password`, never here."""

    class Meta:
        model = TenantMember
        fields = ["user", "tenant", "role"]

    def clean_user(self) -> Any:
        user = self.cleaned_data["user"]
        if user is not None and (user.is_staff or user.is_superuser):
            raise ValidationError("Staff users act through their staff roles, not as members.")
        return user


class TenantMemberInline(admin.TabularInline):
    model = TenantMember
    form = TenantMemberForm
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["user"]
    extra = 0


@admin.register(TenantMember)
class TenantMemberAdmin(admin.ModelAdmin):
    """Who signs in to a tenant's console, with which role (owner, developer, billing)."""

    form = TenantMemberForm
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__name"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "id"]
    filter_horizontal = ["allowed_aliases"]
    actions = ["issue_api_key"]
    inlines = [TenantMemberInline]

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
        "can_read_billing",
    ]
    list_filter = ["tenant", "can_read_billing", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "tenant__name"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at", "tenant"]
    fields = [
        "tenant",
        "name",
        "prefix",
        "key_hash",
        "expires_at",
        # Whether the key reads invoices and balances over REST (decision 0118).
        "can_read_billing",
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
    """One target of an alias. The base URL is normalized (or refused) by the same rule as
    `route_set`: a plain text field, so Django's URL validator (which refuses hosts like
    `vllm:8000`) does not judge it first. The alias is typed by name and created when new,
    as `route_set` does; the services' rules hold (one wire family per alias, never the
    last active target, never a target the alias's effort rules name)."""

    alias = forms.CharField(max_length=200, help_text="The model name tenants call.")
    # Blank takes the model's default ("default", 0, 100), as route_set does.
    name = forms.CharField(
        max_length=100,
        required=False,
        help_text='The target\'s name within its alias (blank: "default").',
    )
    priority = forms.IntegerField(
        required=False, min_value=-32768, max_value=32767, help_text="Lower goes first (0)."
    )
    weight = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=1_000_000,
        help_text="Share of traffic under the weighted policy (100).",
    )
    base_url = forms.CharField(
        max_length=500,
        help_text="openai: https://api.openai.com/v1; anthropic: https://api.anthropic.com; "
        "openai-compatible: the URL its OpenAI SDK clients use, e.g. http://HOST:8000/v1",
    )

    class Meta:
        model = Route
        formfield_callback = url_formfield
        fields = [
            "alias",
            "name",
            "priority",
            "weight",
            "max_concurrent",
            "first_byte_timeout_ms",
            "provider",
            "base_url",
            "upstream_model",
            "api_key_env",
            "accelerator",
            "provider_account",
            "upstream_key_id",
            "is_active",
        ]

    def _get_validation_exclusions(self) -> set[str]:
        # The model's URLField validator would judge the normalized URL again and refuse
        # hosts without a dot (`http://vllm:8000/v1`); `base_url_normalize` is the rule.
        # The alias may be new (saved with the target): clean() checks (alias, name).
        return super()._get_validation_exclusions() | {"base_url", "alias"}  # type: ignore[misc]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        provider, base_url = cleaned.get("provider"), cleaned.get("base_url")
        if provider and base_url:
            try:
                cleaned["base_url"] = base_url_normalize(provider=provider, base_url=base_url).url
            except ApplicationError as exc:
                self.add_error("base_url", exc.message)
        account = cleaned.get("provider_account")
        if account is not None and provider and account.provider != provider:
            self.add_error(
                "provider_account",
                f"Account {account.name!r} is {account.provider}; a {provider} route cannot "
                "belong to it.",
            )
        key_id = cleaned.get("upstream_key_id") or ""
        if any(c.isspace() for c in key_id):
            self.add_error(
                "upstream_key_id", "The provider's id of the key (key_... or apikey_...)."
            )
        self._clean_target(cleaned)
        return cleaned

    def clean_priority(self) -> int:
        value = self.cleaned_data.get("priority")
        return 0 if value is None else value

    def clean_weight(self) -> int:
        value = self.cleaned_data.get("weight")
        return 100 if value is None else value

    def _clean_target(self, cleaned: dict[str, Any]) -> None:
        alias_name = str(cleaned.pop("alias", None) or "").strip()
        if not alias_name:
            return
        # the form sets the instance's alias from this: a row, saved or to be saved with it
        cleaned["alias"] = Alias.objects.filter(name=alias_name).first() or Alias(name=alias_name)
        try:
            name = target_name_check(cleaned.get("name") or "default")
        except ApplicationError as exc:
            self.add_error("name", exc.message)
            return
        cleaned["name"] = name
        pk = self.instance.pk
        if Route.objects.filter(alias_id=alias_name, name=name).exclude(pk=pk).exists():
            self.add_error("name", f"{alias_name!r} already has a target named {name!r}.")
            return
        active = cleaned.get("is_active", False)
        try:
            if active and cleaned.get("provider"):
                route_wire_family_check(
                    alias=alias_name, provider=cleaned["provider"], exclude_pk=pk
                )
            saved = Route.objects.filter(pk=pk).first() if pk is not None else None
            if saved is not None and (
                not active or saved.alias_id != alias_name or saved.name != name
            ):
                route_target_leave_check(
                    route=saved, deactivating=not active or saved.alias_id != alias_name
                )
        except ApplicationError as exc:
            self.add_error(None, exc.message)


class TargetInlineFormSet(BaseInlineFormSet):
    """The alias's targets as edited together with its rules: the rules name active
    targets, one stays active, and the active ones speak one wire family."""

    def clean(self) -> None:
        super().clean()
        if any(form.errors for form in self.forms):
            return
        active = [
            form.instance
            for form in self.forms
            if form.cleaned_data and form.cleaned_data.get("is_active")
        ]
        alias: Alias = self.instance
        if self.forms and not active and alias.pk is not None:
            raise ValidationError(
                "Keep at least one target active (or deactivate the alias instead)."
            )
        families = {wire_family(route.provider) for route in active}
        if len(families) > 1:
            raise ValidationError(
                "Every active target of an alias speaks one wire family (OpenAI or Anthropic)."
            )
        if alias.policy == Alias.Policy.EFFORT and alias.rules:
            names = [str(form.cleaned_data.get("name") or "") for form in self.forms]
            active_names = [
                name
                for name, form in zip(names, self.forms, strict=True)
                if form.cleaned_data.get("is_active")
            ]
            unknown = rules_unknown_targets(parse_rules(alias.rules), active_names)
            if unknown:
                raise ValidationError(
                    f"The rules send calls to {', '.join(map(repr, unknown))}, which is not an "
                    "active target of this alias."
                )


class TargetInline(admin.TabularInline):
    """The alias's targets: routing fields here, everything else on the route's own page."""

    model = Route
    formset = TargetInlineFormSet
    fk_name = "alias"
    fields = [
        "name",
        "priority",
        "weight",
        "max_concurrent",
        "first_byte_timeout_ms",
        "is_active",
        "serves",
        "breaker",
    ]
    readonly_fields = ["serves", "breaker"]
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["priority", "name"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a new target needs its upstream: added on the route page

    @admin.display(description="Serves")
    def serves(self, obj: Route) -> str:
        where = f" on {obj.accelerator}" if obj.accelerator else ""
        return f"{obj.provider} {obj.upstream_model}{where}"

    @admin.display(description="Breaker")
    def breaker(self, obj: Route) -> str:
        """The live breaker state the proxies share in Redis (read once per page: inline
        instances live for one request)."""
        cache: dict[str, BreakerStates] = self.__dict__.setdefault("_breakers", {})
        if obj.alias_id not in cache:
            cache[obj.alias_id] = breaker_states(obj.alias.pk)
        return cache[obj.alias_id].state(obj.pk)


class AliasAdminForm(forms.ModelForm):
    class Meta:
        model = Alias
        fields = ["name", "policy", "rules", "max_attempts", "is_active"]
        help_texts = {
            "rules": 'Effort policy only: a JSON list, first match wins, e.g. [{"name": '
            '"light", "efforts": ["minimal", "low"], "max_input_tokens": 2000, "target": '
            '"mini"}]. No match: the target named "default".',
        }

    def clean_rules(self) -> Any:
        raw = self.cleaned_data.get("rules")
        try:
            return rules_as_json(parse_rules(raw if raw is not None else []))
        except ValueError as exc:
            raise ValidationError(f"Invalid rules: {exc}") from exc

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("rules") and cleaned.get("policy") != Alias.Policy.EFFORT:
            self.add_error("rules", "Rules apply to the effort policy only: clear them ([]).")
        return cleaned


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    """An alias and its routing policy, with its targets (routes) inline."""

    form = AliasAdminForm
    inlines = [TargetInline]
    list_display = ["name", "policy", "max_attempts", "targets_active", "is_active"]
    list_filter = ["policy", "is_active"]
    search_fields = ["name"]
    readonly_fields = ["economics"]

    @admin.display(description="economics (last 7 days)")
    def economics(self, obj: Alias) -> SafeString:
        return economics_panel(obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Alias]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                active_targets=Count("targets", filter=Q(targets__is_active=True)),
                all_targets=Count("targets"),
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # the name is what the targets' alias column holds: renaming would orphan them
        return [*super().get_readonly_fields(request, obj), *(["name"] if obj else [])]

    @admin.display(description="Active targets")
    def targets_active(self, obj: Any) -> str:
        return f"{obj.active_targets} of {obj.all_targets}"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        add_url = reverse("admin:metering_route_add") + f"?alias={form.instance.name}"
        self.message_user(
            request,
            format_html('Add a target on <a href="{}">a new route</a>.', add_url),
            messages.INFO,
        )
        for warning in alias_warnings(alias=form.instance):
            self.message_user(request, warning, messages.WARNING)


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    form = RouteAdminForm
    formfield_overrides = URL_FORMFIELD_OVERRIDES
    list_display = [
        "alias",
        "name",
        "priority",
        "weight",
        "provider",
        "base_url",
        "upstream_model",
        "accelerator",
        "provider_account",
        "upstream_key_id",
        "is_active",
    ]
    list_filter = ["provider", "accelerator", "provider_account", "is_active"]
    list_select_related = ["provider_account"]
    search_fields = ["alias__name", "name", "upstream_model", "upstream_key_id"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # never the alias's last active target, nor one its effort rules name (as
        # route_target_remove); deactivating is the usual way out of service
        if obj is not None:
            try:
                route_target_leave_check(route=obj, deactivating=True)
            except ApplicationError:
                return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one at a time, through the check above
        return actions

    @transaction.atomic
    def save_model(self, request: HttpRequest, obj: Route, form: Any, change: bool) -> None:
        # The key history (reconciliation): kept by the same services as route_set.
        if obj.pk is not None:
            route_key_history_seed(route_id=obj.pk)
        if obj.alias.pk is None:  # a new alias typed on the form, created as route_set does
            obj.alias, _ = Alias.objects.get_or_create(name=obj.alias.name)
        super().save_model(request, obj, form, change)
        route_key_period_record(route=obj)
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


# --- Provider accounts and their reports (decision 0116) -----------------------------------


class ProviderAccountAdminForm(forms.ModelForm):
    """The same checks as `provider_account_set`: the key by variable name only, a clean
    base URL, a map of names. The base URL is a plain text field judged by that rule only
    (Django's URL validator refuses hosts without a dot, such as a proxy's `http://gw:8080`)."""

    admin_base_url = forms.CharField(
        max_length=500,
        required=False,
        help_text="Blank: the provider's own (https://api.openai.com/v1, "
        "https://api.anthropic.com/v1). Include the version segment.",
    )

    class Meta:
        model = ProviderAccount
        formfield_callback = url_formfield
        fields = ["name", "provider", "admin_key_env", "admin_base_url", "model_map", "is_active"]

    def _get_validation_exclusions(self) -> set[str]:
        return super()._get_validation_exclusions() | {"admin_base_url"}  # type: ignore[misc]

    def clean_admin_key_env(self) -> str:
        try:
            return admin_key_env_validate(self.cleaned_data.get("admin_key_env") or "")
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_admin_base_url(self) -> str:
        try:
            return admin_base_url_validate(self.cleaned_data.get("admin_base_url") or "")
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_model_map(self) -> dict[str, str]:
        try:
            return model_map_validate(self.cleaned_data.get("model_map") or {})
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_provider(self) -> str:
        provider = str(self.cleaned_data.get("provider") or "")
        try:
            account_provider_change_check(account=self.instance, provider=provider)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None
        return provider


@admin.register(ProviderAccount)
class ProviderAccountAdmin(admin.ModelAdmin):
    form = ProviderAccountAdminForm
    formfield_overrides = URL_FORMFIELD_OVERRIDES
    list_display = [
        "name",
        "provider",
        "admin_key_env",
        "admin_base_url",
        "is_active",
        "last_import_at",
        "last_error",
    ]
    list_filter = ["provider", "is_active"]
    search_fields = ["name"]
    readonly_fields = ["last_import_at", "last_error", "created_at", "updated_at"]


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Data written by Reckon itself (the importer, the ledger, learners): never edited
    or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(UpstreamKeyPeriod)
class UpstreamKeyPeriodAdmin(_ReadOnlyAdmin):
    """The key each route declared over time (written by route_set and the route admin)."""

    list_display = ["route", "provider_account", "upstream_key_id", "valid_from", "valid_until"]
    list_filter = ["provider_account"]
    search_fields = ["route__alias", "upstream_key_id"]
    list_select_related = ["route", "provider_account"]


@admin.register(ProviderReportFetch)
class ProviderReportFetchAdmin(_ReadOnlyAdmin):
    list_display = ["fetched_at", "account", "report", "http_status", "run_id", "query"]
    list_filter = ["report", "http_status", "account"]
    search_fields = ["run_id", "body_sha256"]
    list_select_related = ["account"]
    date_hierarchy = "fetched_at"
    show_full_result_count = False
    fields = [
        "account",
        "report",
        "run_id",
        "query",
        "http_status",
        "fetched_at",
        "body_sha256",
        "body",
    ]


@admin.register(ProviderUsageBucket)
class ProviderUsageBucketAdmin(_ReadOnlyAdmin):
    list_display = [
        "bucket_start",
        "account",
        "model",
        "api_key_id",
        "requests",
        "input_uncached_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "revision",
        "changed_at",
    ]
    list_filter = ["account", "bucket_width", "model"]
    search_fields = ["model", "api_key_id", "workspace"]
    list_select_related = ["account"]
    date_hierarchy = "bucket_start"
    show_full_result_count = False


@admin.register(ProviderCostBucket)
class ProviderCostBucketAdmin(_ReadOnlyAdmin):
    list_display = [
        "bucket_start",
        "account",
        "line_item",
        "model",
        "token_type",
        "amount_text",
        "amount_usd",
        "revision",
        "changed_at",
    ]
    list_filter = ["account", "cost_type", "model"]
    search_fields = ["line_item", "model", "workspace"]
    list_select_related = ["account"]
    date_hierarchy = "bucket_start"
    show_full_result_count = False


@admin.register(ProviderBucketRevision)
class ProviderBucketRevisionAdmin(_ReadOnlyAdmin):
    list_display = ["replaced_at", "account", "report", "bucket_id", "revision", "reason"]
    list_filter = ["report", "reason", "account"]
    search_fields = ["bucket_id"]
    list_select_related = ["account"]
    date_hierarchy = "replaced_at"


@admin.register(ReconciliationRow)
class ReconciliationRowAdmin(_ReadOnlyAdmin):
    """Ledger against provider report per account, day, model, key and class
    (metering.reconcile); read-only: reconciliation is the only writer."""

    list_display = [
        "day",
        "account",
        "upstream_model",
        "api_key_id",
        "token_class",
        "ours",
        "theirs",
        "drift",
        "relative_drift",
        "status",
        "drift_equals_reasoning",
        "report_revision",
    ]
    list_filter = [
        "status",
        "account",
        "day",
        "upstream_model",
        "token_class",
        "drift_equals_reasoning",
    ]
    search_fields = ["upstream_model", "api_key_id", "account__name"]
    date_hierarchy = "day"
    list_select_related = ["account"]
    readonly_fields = [f.name for f in ReconciliationRow._meta.fields]


@admin.register(RouteTargetHour)
class RouteTargetHourAdmin(_ReadOnlyAdmin):
    """Attempts per target and hour, written by the ledger's batch (never edited)."""

    list_display = ["route_id", "hour", "reasoning_effort", "attempts", "answered", "failed_over"]
    date_hierarchy = "hour"


@admin.register(RouteLatencyBucket)
class RouteLatencyBucketAdmin(_ReadOnlyAdmin):
    list_display = ["route_id", "hour", "reasoning_effort", "kind", "bucket", "count"]


@admin.register(RouteExpectation)
class RouteExpectationAdmin(_ReadOnlyAdmin):
    """What a call to each target plausibly spends, learned hourly (never edited)."""

    list_display = ["route", "reasoning_effort", "mean_output_tokens", "samples", "computed_at"]
    list_select_related = ["route"]
