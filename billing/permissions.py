"""The Django permissions ("app_label.codename") that billing's operations need, checked
by the admin and the REST API alike.

Custom permissions (declared in the models' `Meta.permissions`) stand where a model
permission would be too coarse: reading an invoice must not allow voiding it, editing a
balance must not allow turning off its hard stop. The roles that bundle them for staff are
the API's (`api/permissions.py`)."""

# plans and subscriptions
PLAN_VIEW = "billing.view_plan"
PLAN_ADD = "billing.add_plan"
PLAN_VERSION_VIEW = "billing.view_planversion"
PLAN_VERSION_ADD = "billing.add_planversion"
PLAN_VERSION_PUBLISH = "billing.publish_planversion"
SUBSCRIPTION_VIEW = "billing.view_subscription"
SUBSCRIPTION_ADD = "billing.add_subscription"
SUBSCRIPTION_CHANGE = "billing.change_subscription"

# hardware cost basis
ACCELERATOR_VIEW = "billing.view_acceleratortype"
COST_BASIS_ADD = "billing.add_costbasisversion"
MARGIN_POLICY_ADD = "billing.add_marginpolicy"
DEPLOYMENT_ADD = "billing.add_deployment"

# alerts
ALERT_VIEW = "billing.view_alert"
ALERT_REDELIVER = "billing.change_alert"

# finance
INVOICE_VIEW = "billing.view_invoice"
INVOICE_EXPORT = "billing.export_invoices"
INVOICE_VOID = "billing.void_invoice"
INVOICE_RESEND = "billing.resend_invoice"
CREDIT_NOTE_ISSUE = "billing.issue_creditnote"
MARGINS_VIEW = "billing.view_margins"
BALANCE_VIEW = "billing.view_balanceaccount"
BALANCE_CHANGE = "billing.change_balanceaccount"
BALANCE_ENTRY_VIEW = "billing.view_balanceentry"
CREDIT_GRANT = "billing.grant_credit"
HARD_STOP_CHANGE = "billing.change_hard_stop"
