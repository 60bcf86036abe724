from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from metering.services import tenant_allow_routes, tenant_create


class Command(BaseCommand):
    help = "Create a tenant and print its id."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("name")
        parser.add_argument(
            "--allow", nargs="*", default=[], metavar="ALIAS", help="route aliases it may call"
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            tenant = tenant_create(name=options["name"])
            if options["allow"]:
                tenant_allow_routes(tenant=tenant, aliases=options["allow"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(str(tenant.id))
