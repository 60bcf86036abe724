from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from api import billing_views, finance_views, invoice_views, views

urlpatterns = [
    path("usage/records", views.UsageRecordListView.as_view(), name="usage-records"),
    path("usage/summary", views.UsageSummaryView.as_view(), name="usage-summary"),
    path("usage/alerts", views.AlertListView.as_view(), name="usage-alerts"),
    path("balance", billing_views.BalanceView.as_view(), name="balance"),
    path("balance/entries", billing_views.BalanceEntryListView.as_view(), name="balance-entries"),
    path(
        "tenants/<uuid:tenant_id>/credits",
        billing_views.TenantCreditListCreateView.as_view(),
        name="tenant-credits",
    ),
    path(
        "tenants/<uuid:tenant_id>/balance",
        billing_views.TenantBalanceView.as_view(),
        name="tenant-balance",
    ),
    path("invoices/upcoming", billing_views.UpcomingInvoiceView.as_view(), name="invoice-upcoming"),
    path("pricing/quote", billing_views.QuoteView.as_view(), name="pricing-quote"),
    path("plans", billing_views.PlanListCreateView.as_view(), name="plans"),
    path(
        "plans/<int:plan_id>/versions",
        billing_views.PlanVersionCreateView.as_view(),
        name="plan-versions",
    ),
    path(
        "plan-versions/<int:version_id>",
        billing_views.PlanVersionDetailView.as_view(),
        name="plan-version",
    ),
    path(
        "plan-versions/<int:version_id>/publish",
        billing_views.PlanVersionPublishView.as_view(),
        name="plan-version-publish",
    ),
    path("subscriptions", billing_views.SubscriptionListCreateView.as_view(), name="subscriptions"),
    path(
        "subscriptions/<int:subscription_id>/change-plan",
        billing_views.SubscriptionChangePlanView.as_view(),
        name="subscription-change-plan",
    ),
    path("invoices", invoice_views.InvoiceListView.as_view(), name="invoices"),
    path("invoices/export.csv", invoice_views.InvoiceExportView.as_view(), name="invoices-export"),
    path("invoices/<int:invoice_id>", invoice_views.InvoiceDetailView.as_view(), name="invoice"),
    path(
        "invoices/<int:invoice_id>/pdf", invoice_views.InvoicePdfView.as_view(), name="invoice-pdf"
    ),
    path(
        "invoices/<int:invoice_id>/recompute",
        invoice_views.InvoiceRecomputeView.as_view(),
        name="invoice-recompute",
    ),
    path(
        "invoices/<int:invoice_id>/credit-notes",
        invoice_views.CreditNoteCreateView.as_view(),
        name="invoice-credit-notes",
    ),
    path("accelerators", finance_views.AcceleratorListView.as_view(), name="accelerators"),
    path(
        "accelerators/<slug:key>/cost-basis",
        finance_views.CostBasisCreateView.as_view(),
        name="accelerator-cost-basis",
    ),
    path(
        "accelerators/<slug:key>/margin-policy",
        finance_views.MarginPolicyCreateView.as_view(),
        name="accelerator-margin-policy",
    ),
    path("deployments", finance_views.DeploymentCreateView.as_view(), name="deployments"),
    path("finance/margins", finance_views.MarginReportView.as_view(), name="finance-margins"),
    path(
        "finance/margins.csv",
        finance_views.MarginReportCsvView.as_view(),
        name="finance-margins-csv",
    ),
    path("finance/whatif", finance_views.WhatIfView.as_view(), name="finance-whatif"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
]
