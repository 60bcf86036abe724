"""The billing pages of the Django admin, one module per area. Importing this package
registers them all (Django's admin autodiscovery imports `billing.admin`)."""

from billing.admin import alerts, balances, costs, invoices, plans  # noqa: F401
