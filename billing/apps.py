from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing.spend import spend_rates_for_tenant
        from metering.proxy.context import register_spend_rates_provider

        register_spend_rates_provider(spend_rates_for_tenant)
