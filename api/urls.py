"""The REST API under /api/v1/: one row per endpoint (path, view, route name)."""

from django.urls import URLPattern, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.views import APIView

from api.views import balances, finance, invoices, plans, routing, usage

ENDPOINTS: list[tuple[str, type[APIView], str]] = [
    # usage
    ("usage/records", usage.UsageRecordListView, "usage-records"),
    ("usage/summary", usage.UsageSummaryView, "usage-summary"),
    ("usage/series", usage.UsageSeriesView, "usage-series"),
    ("usage/alerts", usage.AlertListView, "usage-alerts"),
    # prepaid balances
    ("balance", balances.BalanceView, "balance"),
    ("balance/entries", balances.BalanceEntryListView, "balance-entries"),
    ("tenants/<uuid:tenant_id>/credits", balances.TenantCreditListCreateView, "tenant-credits"),
    ("tenants/<uuid:tenant_id>/balance", balances.TenantBalanceView, "tenant-balance"),
    # plans, subscriptions, quotes
    ("pricing/quote", plans.QuoteView, "pricing-quote"),
    ("plans", plans.PlanListCreateView, "plans"),
    ("plans/<int:plan_id>/versions", plans.PlanVersionCreateView, "plan-versions"),
    ("plan-versions/<int:version_id>", plans.PlanVersionDetailView, "plan-version"),
    (
        "plan-versions/<int:version_id>/publish",
        plans.PlanVersionPublishView,
        "plan-version-publish",
    ),
    ("subscriptions", plans.SubscriptionListCreateView, "subscriptions"),
    (
        "subscriptions/<int:subscription_id>/change-plan",
        plans.SubscriptionChangePlanView,
        "subscription-change-plan",
    ),
    # invoices
    ("invoices/upcoming", invoices.UpcomingInvoiceView, "invoice-upcoming"),
    ("invoices", invoices.InvoiceListView, "invoices"),
    ("invoices/export.csv", invoices.InvoiceExportView, "invoices-export"),
    ("invoices/<int:invoice_id>", invoices.InvoiceDetailView, "invoice"),
    ("invoices/<int:invoice_id>/pdf", invoices.InvoicePdfView, "invoice-pdf"),
    ("invoices/<int:invoice_id>/recompute", invoices.InvoiceRecomputeView, "invoice-recompute"),
    (
        "invoices/<int:invoice_id>/credit-notes",
        invoices.CreditNoteCreateView,
        "invoice-credit-notes",
    ),
    # routing across targets (decision 0117)
    ("routing/aliases", routing.RoutingAliasListView, "routing-aliases"),
    ("routing/aliases/<path:alias>", routing.RoutingAliasDetailView, "routing-alias"),
    # hardware cost basis and margins
    ("accelerators", finance.AcceleratorListView, "accelerators"),
    ("accelerators/<slug:key>/cost-basis", finance.CostBasisCreateView, "accelerator-cost-basis"),
    (
        "accelerators/<slug:key>/margin-policy",
        finance.MarginPolicyCreateView,
        "accelerator-margin-policy",
    ),
    ("deployments", finance.DeploymentCreateView, "deployments"),
    ("finance/margins", finance.MarginReportView, "finance-margins"),
    ("finance/margins.csv", finance.MarginReportCsvView, "finance-margins-csv"),
    ("finance/margins/series", finance.MarginSeriesView, "finance-margins-series"),
    ("finance/whatif", finance.WhatIfView, "finance-whatif"),
    ("finance/whatif/reroute", routing.RerouteWhatIfView, "finance-whatif-reroute"),
    ("finance/whatif/reroute.csv", routing.RerouteWhatIfCsvView, "finance-whatif-reroute-csv"),
    ("finance/reconciliation", finance.ReconciliationListView, "finance-reconciliation"),
    (
        "finance/reconciliation.csv",
        finance.ReconciliationCsvView,
        "finance-reconciliation-csv",
    ),
]

urlpatterns: list[URLPattern] = [
    *(path(route, view.as_view(), name=name) for route, view, name in ENDPOINTS),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
]
