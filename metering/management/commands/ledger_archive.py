from django.core.management.base import BaseCommand

from metering.calendar import month_of_key
from metering.ledger.archive import ledger_month_archive
from metering.management.archive_errors import archive_command_errors


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
        with archive_command_errors("archive"):
            month = month_of_key(options["month"])
            archive = ledger_month_archive(month=month, drop=not options["no_drop"])
        manifest = archive.manifest
        self.stdout.write(
            f"{options['month']}: {archive.state}, {manifest.get('rows', 0)} record(s)"
            f" in {len(manifest.get('files', []))} file(s) at {archive.location}"
        )
