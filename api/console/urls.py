"""The console under /console/: one row per page."""

from django.urls import path

from api.console.views import auth, invoices, keys, overview, staff, usage

app_name = "console"

urlpatterns = [
    path("", auth.home, name="home"),
    path("login", auth.LoginView.as_view(), name="login"),
    path("logout", auth.LogoutView.as_view(), name="logout"),
    # tenant members
    path("overview", overview.overview, name="overview"),
    path("usage", usage.usage, name="usage"),
    path("usage.csv", usage.usage_csv, name="usage-csv"),
    path("keys", keys.key_list, name="keys"),
    path("keys/new", keys.key_create, name="key-create"),
    path("keys/<int:key_id>", keys.key_detail, name="key"),
    path("keys/<int:key_id>/revoke", keys.key_revoke, name="key-revoke"),
    path("invoices", invoices.invoice_list, name="invoices"),
    path("invoices/<int:invoice_id>", invoices.invoice_detail, name="invoice"),
    path("invoices/<int:invoice_id>/pdf", invoices.invoice_pdf, name="invoice-pdf"),
    path("balance", invoices.balance, name="balance"),
    # staff
    path("staff/margins", staff.margins, name="staff-margins"),
    path("staff/margins.csv", staff.margins_csv, name="staff-margins-csv"),
    path("staff/tenants", staff.tenants, name="staff-tenants"),
    path("staff/plans", staff.plans, name="staff-plans"),
    path("staff/reconciliation", staff.reconciliation, name="staff-reconciliation"),
]
