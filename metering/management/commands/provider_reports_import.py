"""`manage.py provider_reports_import`: import a provider account's usage and cost reports
for a window of UTC days, reconcile the days whose buckets changed (the hourly sync
reconciles only its settling window, so a backfill's days are reconciled here, once), and
say what changed. The account's run lock is held throughout: while another run (the hourly
sync) holds the account, the command fails at once saying so, and changes nothing."""

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from config.errors import ApplicationError
from metering.providers.accounts import provider_account_get
from metering.providers.importer import REPORTS, ProviderAccountBusy, provider_reports_import
from metering.providers.locks import account_run_lock
from metering.reconcile.service import reconcile_account_days


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
        parser.add_argument(
            "--no-reconcile",
            action="store_true",
            help="import only; do not reconcile the days whose buckets changed",
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
            with account_run_lock(account_id=account.pk) as held:
                if not held:
                    raise ProviderAccountBusy(
                        f"Account {account.name!r} is being imported by another run (the "
                        "hourly sync or another import); nothing was done. Try again when "
                        "it has finished."
                    )
                result = provider_reports_import(
                    account=account, since=since, until=until, reports=options["report"]
                )
                reconciled = None
                if result.changed_days and not options["no_reconcile"]:
                    reconciled = reconcile_account_days(
                        account=account, days=result.changed_days, now=timezone.now()
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
            + (f"; {len(reconciled.days)} day(s) reconciled" if reconciled is not None else "")
        )
