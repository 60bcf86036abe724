import logging

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from config.errors import ApplicationError
from metering.calendar import month_of_key
from metering.ledger.archive import ledger_month_archive


class Command(BaseCommand):
    help = (
        "Archive one month of the usage ledger (all tenants): export to Parquet, verify the"
        " archive against the database and the rollups, then drop the month's partition."
        " Safe to repeat; resumes a crashed run."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("month", metavar="YYYY-MM")
        parser.add_argument(
            "--no-drop", action="store_true", help="export and verify only; keep the records"
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            month = month_of_key(options["month"])
            archive = ledger_month_archive(month=month, drop=not options["no_drop"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ApplicationError as exc:
            details = (exc.extra or {}).get("differences", [])
            raise CommandError("\n".join([exc.message, *details])) from exc
        except DatabaseError as exc:  # the details (and any address) go to the log only
            logging.getLogger(__name__).exception("ledger archive failed")
            raise CommandError(
                f"The database failed during the archive ({type(exc).__name__}); see the log."
            ) from exc
        manifest = archive.manifest
        self.stdout.write(
            f"{options['month']}: {archive.state}, {manifest.get('rows', 0)} record(s)"
            f" in {len(manifest.get('files', []))} file(s) at {archive.location}"
        )
