from django.contrib import admin
from django.urls import include, path

from api.views.webhooks import StripeWebhookView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    path("console/", include("api.console.urls")),
    path("webhooks/stripe", StripeWebhookView.as_view(), name="stripe-webhook"),
]

# JSON errors under /api/ and /webhooks/, Django's pages elsewhere (api.errors).
handler400 = "api.errors.bad_request"
handler403 = "api.errors.permission_denied"
handler404 = "api.errors.page_not_found"
handler500 = "api.errors.server_error"
