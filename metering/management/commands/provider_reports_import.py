"""`manage.py provider_reports_import`: import a provider account's usage and cost reports
for a window of UTC days, and say what changed."""

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from config.errors import ApplicationError
from metering.providers.accounts import provider_account_get
from metering.providers.importer import REPORTS, provider_reports_import


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Dates are YYYY-MM-DD (UTC days); got {value!r}.") from None


class Command(BaseCommand):
    help = (
        "Import an account's usage and cost reports for UTC days SINCE..UNTIL (both "
        "included; UNTIL defaults to now). Re-importing is safe: unchanged buckets stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="NAME")
        parser.add_argument("--since", required=True, metavar="YYYY-MM-DD")
        parser.add_argument("--until", metavar="YYYY-MM-DD", help="last day, included")
        parser.add_argument(
            "--report", nargs="+", choices=REPORTS, default=list(REPORTS), help="default: both"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since_day = _day(options["since"])
        since = dt.datetime.combine(since_day, dt.time(), dt.UTC)
        if options["until"]:
            until_day = _day(options["until"])
            if until_day < since_day:
                raise CommandError("--until is before --since.")
            until = dt.datetime.combine(until_day + dt.timedelta(days=1), dt.time(), dt.UTC)
        else:
            until = timezone.now()
            if until <= since:
                raise CommandError("--since is in the future.")
        try:
            account = provider_account_get(name=options["account"])
            result = provider_reports_import(
                account=account, since=since, until=until, reports=options["report"]
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        days = ", ".join(day.isoformat() for day in sorted(result.changed_days)) or "none"
        self.stdout.write(
            f"{account.name}: {'+'.join(options['report'])} "
            f"{result.since:%Y-%m-%d %H:%M}..{result.until:%Y-%m-%d %H:%M} UTC: "
            f"{result.pages} page(s) in {result.attempts} request(s), "
            f"{result.changed} bucket(s) new or changed ({result.created} new), "
            f"{result.removed} removed; days changed: {days}; run {result.run_id}"
        )
