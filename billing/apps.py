from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Imported once the app registry is ready (billing.terms reads models), not at
        # module import; metering never imports billing: it calls what is registered.
        from billing.terms import tenant_terms
        from metering.control.terms import register_tenant_terms_provider

        register_tenant_terms_provider(tenant_terms)
