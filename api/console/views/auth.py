"""Sign-in and sign-out, and the console's home (members to their overview, staff to
theirs). Failed sign-ins count against the same per-address limit as the admin and the
API (`api.throttling`), before any password hash runs."""

from typing import Any

from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from api.console.access import member_of
from api.console.views.common import STAFF_NAV, page
from api.permissions import may
from api.throttling import (
    AuthFailuresThrottled,
    auth_failures_check,
    auth_failures_record,
    client_address,
)


class LoginView(auth_views.LoginView):
    template_name = "console/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        address = client_address(request)  # type: ignore[arg-type]
        try:
            auth_failures_check(address)
        except AuthFailuresThrottled as exc:
            response = page(
                request,
                "console/forbidden.html",
                {"reason": "Too many failed sign-ins from this address; try again later."},
                status=429,
            )
            response["Retry-After"] = str(exc.wait)
            return response
        response = super().post(request, *args, **kwargs)
        if not request.user.is_authenticated:
            auth_failures_record(address)
        return response

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "console_nav": []}


class LogoutView(auth_views.LogoutView):
    next_page = "console:login"


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("console:login")
    if member_of(request) is not None:
        return redirect("console:overview")
    if request.user.is_staff:
        for name, _label, permission in STAFF_NAV:
            if may(request.user, permission):
                return redirect(name)
    raise PermissionDenied("This account is neither a tenant member nor staff with a role.")


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    reason = str(exception) if exception and str(exception) else "You may not open this page."
    return page(request, "console/forbidden.html", {"reason": reason}, status=403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """The console's own 404 page: another tenant's id lands here too, so it says no more
    than that there is no such page for this account."""
    return page(request, "console/not_found.html", {}, status=404)
