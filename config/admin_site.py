"""The Django admin, with its sign-in form behind the same failed-login limit as the API.

Each failed sign-in runs the full password hash (~0.3 s of CPU here): without a limit an
anonymous client could keep a server busy, or guess staff passwords, as fast as it can
post the form. Failures count per client address in `api.throttling` (shared through
Redis); an address over the limit gets a 429 before any lookup or hash runs.
"""

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest, HttpResponse

from api.throttling import (
    AuthFailuresThrottled,
    auth_failures_check,
    auth_failures_record,
    client_address,
)


class ReckonAdminSite(admin.AdminSite):
    index_template = "admin/reckon_index.html"  # the index, with a link to the console

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method != "POST":
            return super().login(request, extra_context)
        address = client_address(request)  # type: ignore[arg-type]
        try:
            auth_failures_check(address)
        except AuthFailuresThrottled as exc:
            response = HttpResponse(
                "Too many failed sign-ins from this address; try again later.",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(exc.wait)
            return response
        response = super().login(request, extra_context)
        if not request.user.is_authenticated:
            auth_failures_record(address)
        return response


class ReckonAdminConfig(AdminConfig):
    default_site = "config.admin_site.ReckonAdminSite"
