"""The Django permissions ("app_label.codename") that metering's operations need, checked
by the admin and the REST API alike. Model permissions (`view_tenant`, `add_apikey`) come
from Django; custom ones are declared in the models' `Meta.permissions`. The roles that
bundle them for staff are the API's (`api/permissions.py`)."""

TENANT_VIEW = "metering.view_tenant"
APIKEY_ISSUE = "metering.add_apikey"
APIKEY_REVOKE = "metering.revoke_apikey"
USAGE_VIEW = "metering.view_usagerecord"
# Reconciliation against the providers' reports: rows in the admin and the finance API.
RECONCILIATION_VIEW = "metering.view_reconciliationrow"
# Routing visibility (decision 0117): an alias with its targets' statistics (operator
# and finance roles both hold it; margins need billing's margins permission besides).
ALIAS_VIEW = "metering.view_alias"
