"""What every console page shares: the navigation for the signed-in person, and render."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from api.console.access import (
    INVOICES_VIEW,
    KEYS_VIEW,
    USAGE_VIEW,
    can,
    member_of,
)
from api.permissions import may
from billing.permissions import MARGINS_VIEW, PLAN_VERSION_VIEW
from metering.demo import DEMO_TENANT
from metering.models import TenantMember
from metering.permissions import RECONCILIATION_VIEW, TENANT_VIEW

# (route name, label, member capability) in the order of the navigation bar.
MEMBER_NAV: list[tuple[str, str, str]] = [
    ("console:overview", "Overview", USAGE_VIEW),
    ("console:usage", "Usage", USAGE_VIEW),
    ("console:keys", "API keys", KEYS_VIEW),
    ("console:invoices", "Invoices", INVOICES_VIEW),
    ("console:balance", "Balance", INVOICES_VIEW),
]
# (route name, label, Django permission) for staff.
STAFF_NAV: list[tuple[str, str, str]] = [
    ("console:staff-margins", "Margins", MARGINS_VIEW),
    ("console:staff-tenants", "Tenants and limits", TENANT_VIEW),
    ("console:staff-plans", "Plan warnings", PLAN_VERSION_VIEW),
    ("console:staff-reconciliation", "Reconciliation", RECONCILIATION_VIEW),
]


def nav_for(request: HttpRequest, member: TenantMember | None) -> list[dict[str, Any]]:
    current = request.resolver_match.view_name if request.resolver_match else ""
    if member is not None:
        items = [(name, label) for name, label, cap in MEMBER_NAV if can(member, cap)]
    elif request.user.is_authenticated and request.user.is_staff:
        items = [(name, label) for name, label, perm in STAFF_NAV if may(request.user, perm)]
    else:
        items = []
    return [
        {"url": reverse(name), "label": label, "current": name == current} for name, label in items
    ]


def page(
    request: HttpRequest, template: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    """Render a console page with the navigation and who is signed in."""
    member = getattr(request, "console_member", None) or member_of(request)
    base = {
        "console_member": member,
        "console_nav": nav_for(request, member),
        "demo_data": member is not None and member.tenant.name == DEMO_TENANT,
    }
    return render(request, template, {**base, **context}, status=status)
