from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from metering.services import api_key_create, tenant_get


class Command(BaseCommand):
    help = "Create an API key for a tenant (id or name) and print it. It is shown only once."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("tenant")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--expires-at", type=datetime.fromisoformat, help="ISO 8601 with a UTC offset"
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        expires_at = options["expires_at"]
        if expires_at is not None and expires_at.tzinfo is None:
            raise CommandError("--expires-at needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00")
        try:
            tenant = tenant_get(ref=options["tenant"])
            created = api_key_create(tenant=tenant, name=options["name"], expires_at=expires_at)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(created.raw_key)
