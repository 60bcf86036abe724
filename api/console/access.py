"""Who may open which console page: member capabilities per role, and the staff check.

A member's role maps to a set of capabilities; a page names the one it needs. Staff
(`is_staff`, no membership) open only the staff pages, each naming the Django
permission it needs (the staff roles of `api.permissions`). A member who lacks a
capability gets a 403 page; an anonymous visitor is sent to sign in."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from api.permissions import may
from metering.models import TenantMember

USAGE_VIEW = "usage.view"
KEYS_VIEW = "keys.view"
KEYS_MANAGE = "keys.manage"  # create and revoke keys
LIMITS_MANAGE = "limits.manage"  # per-key spend limits and reasoning policy
INVOICES_VIEW = "invoices.view"  # invoices, the upcoming invoice, balance and credits

CAPABILITIES: dict[str, frozenset[str]] = {
    TenantMember.Role.OWNER: frozenset(
        {USAGE_VIEW, KEYS_VIEW, KEYS_MANAGE, LIMITS_MANAGE, INVOICES_VIEW}
    ),
    TenantMember.Role.DEVELOPER: frozenset({USAGE_VIEW, KEYS_VIEW, KEYS_MANAGE}),
    TenantMember.Role.BILLING: frozenset({USAGE_VIEW, KEYS_VIEW, INVOICES_VIEW}),
}


def member_of(request: HttpRequest) -> TenantMember | None:
    """The signed-in user's membership (None for anonymous, staff, or no membership)."""
    user = request.user
    if not user.is_authenticated or not user.is_active:
        return None
    return TenantMember.objects.select_related("tenant").filter(user=user).first()


def can(member: TenantMember | None, capability: str) -> bool:
    return member is not None and capability in CAPABILITIES.get(member.role, frozenset())


def member_page(capability: str) -> Callable[..., Any]:
    """A console page for tenant members holding `capability`. The view is called as
    `view(request, member, *args, **kwargs)`; `member.tenant` scopes every read."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), "console:login")
            member = member_of(request)
            if member is None or not member.tenant.is_active:
                raise PermissionDenied("This page is for members of a tenant.")
            if not can(member, capability):
                raise PermissionDenied(f"Your role ({member.role}) may not open this page.")
            request.console_member = member  # type: ignore[attr-defined]
            return view(request, member, *args, **kwargs)

        return wrapped

    return decorate


def staff_page(permission: str) -> Callable[..., Any]:
    """A console page for staff holding the Django `permission` (as the REST API checks)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), "console:login")
            if not request.user.is_staff or not may(request.user, permission):
                raise PermissionDenied(f"This page needs the permission {permission}.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorate
