from django.contrib import admin
from django.urls import include, path

from api.invoice_views import StripeWebhookView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    path("webhooks/stripe", StripeWebhookView.as_view(), name="stripe-webhook"),
]
