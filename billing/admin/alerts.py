"""Alert webhook endpoints (tenants' and the operator's) and the alerts sent to them
(redelivery on demand); reconciliation alerts are listed beside budget alerts (filter by
kind)."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from billing import permissions as perm
from billing.alert_delivery import alert_deliver_task
from billing.models import (
    Alert,
    OperatorEndpoint,
    WebhookEndpoint,
)


def _masked(secret: str) -> str:
    # enough to tell secrets apart, never enough to sign with
    return f"{secret[:4]}…" if len(secret) >= 16 else "…"


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["tenant", "url", "masked_secret", "thresholds", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["tenant__name", "url"]

    @admin.display(description="Secret")
    def masked_secret(self, obj: WebhookEndpoint) -> str:
        return _masked(obj.secret)


@admin.register(OperatorEndpoint)
class OperatorEndpointAdmin(admin.ModelAdmin):
    """The operator's endpoint for reconciliation alerts (at most one active)."""

    list_display = ["url", "masked_secret", "is_active", "created_at"]
    list_filter = ["is_active"]

    @admin.display(description="Secret")
    def masked_secret(self, obj: OperatorEndpoint) -> str:
        return _masked(obj.secret)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "kind",
        "tenant",
        "budget",
        "description",
        "period",
        "threshold",
        "used",
        "limit",
        "unit",
        "delivery",
        "attempts",
        "delivered_at",
    ]
    list_filter = ["kind", "delivery", "budget"]
    search_fields = ["tenant__name", "budget", "event_id", "description"]
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
