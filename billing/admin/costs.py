"""The hardware cost basis: accelerator types with their cost bases and margin policies,
deployments, calibration runs."""

from django.contrib import admin

from billing.admin.base import ReadOnlyAdmin
from billing.models import (
    AcceleratorType,
    CalibrationRun,
    CostBasisVersion,
    Deployment,
    MarginPolicy,
)


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


@admin.register(CostBasisVersion)
class CostBasisVersionAdmin(ReadOnlyAdmin):
    list_display = ["accelerator", "version", "mode", "hourly_usd"]
    list_filter = ["mode"]


@admin.register(MarginPolicy)
class MarginPolicyAdmin(ReadOnlyAdmin):
    list_display = ["accelerator", "target_margin", "minimum_margin", "effective_from"]
