import logging

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from config.errors import ApplicationError
from metering.calendar import month_of_key
from metering.ledger.archive import ledger_month_restore


class Command(BaseCommand):
    help = (
        "Bring an archived and dropped month of the usage ledger back into the database,"
        " with its record ids, checked against its manifest. A month already back is left"
        " as it is."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("month", metavar="YYYY-MM")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            archive = ledger_month_restore(month=month_of_key(options["month"]))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ApplicationError as exc:
            details = (exc.extra or {}).get("differences", [])
            raise CommandError("\n".join([exc.message, *details])) from exc
        except DatabaseError as exc:  # the details (and any address) go to the log only
            logging.getLogger(__name__).exception("ledger restore failed")
            raise CommandError(
                f"The database failed during the restore ({type(exc).__name__}); see the log."
            ) from exc
        self.stdout.write(
            f"{options['month']}: {archive.state}, {archive.manifest.get('rows', 0)} record(s)"
        )
