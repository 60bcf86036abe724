"""Alert webhook endpoints (tenants' and the operator's) and the alerts sent to them
(redelivery on demand); reconciliation alerts are listed beside budget alerts (filter by
kind).

Invariant: no admin page ever renders a signing secret, only its masked prefix. A
tenant's endpoint secret is write-only (typed on add or to rotate it, at least
`MIN_SECRET_LENGTH` characters, never rendered back; left blank on change it is kept).
The operator's endpoint and its secret are made only by `manage.py
operator_endpoint_set`, which prints the new secret once; the admin lists it and can
deactivate it.
"""

from typing import Any

from django import forms
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
from config.forms import URL_FORMFIELD_OVERRIDES, url_formfield


def _masked(secret: str) -> str:
    # enough to tell secrets apart, never enough to sign with
    return f"{secret[:4]}…" if len(secret) >= 16 else "…"


MIN_SECRET_LENGTH = 32


class WebhookEndpointForm(forms.ModelForm):
    """The secret is write-only: never rendered, required on add, kept when left blank."""

    secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            f"Write-only: type a new secret (at least {MIN_SECRET_LENGTH} characters) to "
            "set or rotate it; leave blank to keep the current one."
        ),
    )

    class Meta:
        model = WebhookEndpoint
        formfield_callback = url_formfield
        fields = ["tenant", "url", "secret", "thresholds", "is_active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["secret"] = ""  # never sent to the browser

    def clean_secret(self) -> str:
        typed: str = self.cleaned_data.get("secret") or ""
        if not typed:
            if self.instance.pk is None:
                raise forms.ValidationError("A new endpoint needs a secret.")
            return str(self.instance.secret)  # kept
        if len(typed) < MIN_SECRET_LENGTH:
            raise forms.ValidationError(
                f"The secret must be at least {MIN_SECRET_LENGTH} characters."
            )
        return typed


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    formfield_overrides = URL_FORMFIELD_OVERRIDES
    list_display = ["tenant", "url", "masked_secret", "thresholds", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["tenant__name", "url"]
    readonly_fields = ["masked_secret"]

    @admin.display(description="Current secret")
    def masked_secret(self, obj: WebhookEndpoint) -> str:
        return _masked(obj.secret) if obj.pk else "-"


@admin.register(OperatorEndpoint)
class OperatorEndpointAdmin(admin.ModelAdmin):
    """The operator's endpoint for reconciliation alerts (at most one active). Made and
    rotated by `manage.py operator_endpoint_set` only; here it is listed, and can be
    deactivated."""

    list_display = ["url", "masked_secret", "is_active", "created_at"]
    list_filter = ["is_active"]
    exclude = ["secret"]
    readonly_fields = ["url", "masked_secret", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # operator_endpoint_set makes one and prints its secret once

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
