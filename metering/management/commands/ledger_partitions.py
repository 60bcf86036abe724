from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metering.ledger.partitions import (
    STARTUP_LEAD,
    is_partitioned,
    partitions_bounds,
    partitions_cover,
    partitions_ensure,
)


class Command(BaseCommand):
    help = (
        "List the usage ledger's monthly partitions (PostgreSQL); with --ensure, first create"
        " the current month's and the next ones' (RECKON_LEDGER_PARTITIONS_AHEAD)."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--ensure", action="store_true", help="create missing months ahead")
        parser.add_argument(
            "--ahead",
            type=int,
            default=None,
            help="months after the current one (default RECKON_LEDGER_PARTITIONS_AHEAD)",
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        if not is_partitioned():
            self.stdout.write("the ledger is not partitioned (SQLite: one table)")
            return
        if options["ensure"]:
            ahead = options["ahead"]
            ahead = settings.RECKON_LEDGER_PARTITIONS_AHEAD if ahead is None else ahead
            if ahead < 0:
                raise CommandError("--ahead must be 0 or more.")
            for _, name in partitions_ensure(ahead_months=ahead):
                self.stdout.write(f"created {name}")
        for name, low, high in partitions_bounds():
            self.stdout.write(f"{name}  [{low:%Y-%m-%d %H:%M}, {high:%Y-%m-%d %H:%M}) UTC")
        now = datetime.now(UTC)
        if not partitions_cover(now + STARTUP_LEAD, since=now):
            raise CommandError(
                f"the partitions do not cover {now:%Y-%m-%d} to {now + STARTUP_LEAD:%Y-%m-%d}:"
                " a server will not start (run with --ensure)"
            )
