from django.conf import settings
from django.core.management.base import BaseCommand

from metering.ledger.spool import spool_replay, spool_report


class Command(BaseCommand):
    help = "Load usage records spooled during a database outage into the ledger (idempotent)."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        consumed: set[str] = set()
        try:
            inserted = spool_replay(settings.RECKON_LEDGER_SPOOL_DIR, owners=consumed)
        finally:
            # the writers whose files were loaded no longer hold back a period close
            spool_report(
                spool_dir=settings.RECKON_LEDGER_SPOOL_DIR,
                redis_url=settings.REDIS_URL,
                writers=consumed,
                ttl_seconds=None,
            )
        self.stdout.write(f"{inserted} spooled usage record(s) inserted")
