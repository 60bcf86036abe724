from django.conf import settings
from django.core.management.base import BaseCommand

from metering.ledger import spool_replay


class Command(BaseCommand):
    help = "Load usage records spooled during a database outage into the ledger (idempotent)."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        inserted = spool_replay(settings.RECKON_LEDGER_SPOOL_DIR)
        self.stdout.write(f"{inserted} spooled usage record(s) inserted")
