from django.core.management.base import BaseCommand, CommandError

from metering.errors import ApplicationError
from metering.models import Route
from metering.services import route_set, tenant_allow_routes, tenant_get


class Command(BaseCommand):
    help = "Create or update the route behind a model alias."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("alias")
        parser.add_argument("--provider", required=True, choices=Route.Provider.values)
        parser.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
        parser.add_argument("--upstream-model", required=True)
        parser.add_argument("--api-key-env", default="", help="env var holding the upstream key")
        parser.add_argument("--accelerator", default="", help="accelerator type label")
        parser.add_argument(
            "--allow-tenant", nargs="*", default=[], metavar="TENANT", help="grant to tenants"
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            route = route_set(
                alias=options["alias"],
                provider=options["provider"],
                base_url=options["base_url"],
                upstream_model=options["upstream_model"],
                api_key_env=options["api_key_env"],
                accelerator=options["accelerator"],
            )
            for ref in options["allow_tenant"]:
                tenant_allow_routes(tenant=tenant_get(ref=ref), aliases=[route.alias])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"{route.alias} -> {route.provider} {route.base_url} {route.upstream_model}"
        )
