from django.core.management.base import BaseCommand, CommandError

from billing.reconciliation_alerts import operator_endpoint_set
from config.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Set the operator's webhook endpoint for reconciliation alerts and print its new "
        "signing secret (shown once)."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("url")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            _, secret = operator_endpoint_set(url=options["url"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(secret)
