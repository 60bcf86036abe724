"""`manage.py tenant_grant`: grant a tenant aliases (or take them back, --revoke)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.services import tenant_allow_routes, tenant_get, tenant_revoke_routes


class Command(BaseCommand):
    help = "Grant a tenant (id or name) model aliases, with every target of each; --revoke takes them back."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("aliases", nargs="+", metavar="ALIAS")
        parser.add_argument("--revoke", action="store_true", help="take the aliases back")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenant_get(ref=options["tenant"])
            change = tenant_revoke_routes if options["revoke"] else tenant_allow_routes
            change(tenant=tenant, aliases=options["aliases"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        granted = sorted(tenant.allowed_aliases.values_list("name", flat=True))
        self.stdout.write(f"{tenant.name} may call: {', '.join(granted) or '(nothing)'}")
