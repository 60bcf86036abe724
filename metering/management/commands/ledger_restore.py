from django.core.management.base import BaseCommand

from metering.calendar import month_of_key
from metering.ledger.archive import ledger_month_restore
from metering.management.archive_errors import archive_command_errors


class Command(BaseCommand):
    help = (
        "Bring an archived and dropped month of the usage ledger back into the database,"
        " with its record ids, checked against its manifest. A month already back is left"
        " as it is."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("month", metavar="YYYY-MM")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        with archive_command_errors("restore"):
            archive = ledger_month_restore(month=month_of_key(options["month"]))
        self.stdout.write(
            f"{options['month']}: {archive.state}, {archive.manifest.get('rows', 0)} record(s)"
        )
