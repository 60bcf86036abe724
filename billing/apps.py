from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Imported once the app registry is ready (billing.terms reads models), not at
        # module import; metering never imports billing: it calls what is registered.
        # Importing billing.tasks also registers every billing task with Celery, so eager
        # mode runs each in-process under its name.
        from billing.reconciliation_alerts import reconciliation_rows_changed
        from billing.tasks import alerts_evaluate_soon
        from billing.terms import tenant_terms
        from metering.control.terms import (
            register_alert_thresholds_crossed_handler,
            register_tenant_terms_provider,
        )
        from metering.reconcile.hooks import register_rows_changed_handler

        register_tenant_terms_provider(tenant_terms)
        register_alert_thresholds_crossed_handler(alerts_evaluate_soon)
        register_rows_changed_handler(reconciliation_rows_changed)
