"""`manage.py reconcile`: recompute one provider account's reconciliation rows for the
days of a month (up to now) and print a summary per day."""

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from config.errors import ApplicationError
from metering.calendar import month_day, month_of_key
from metering.reconcile.selectors import provider_account_get, reconciliation_days
from metering.reconcile.service import reconcile_account_days


class Command(BaseCommand):
    help = (
        "Compare what the ledger forwarded with what the provider reports, for every UTC day"
        " of a month so far, and print each day's worst status, its rows by status and its"
        " largest drift. Safe to repeat: rows are recomputed in place."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, help="provider account name")
        parser.add_argument("--period", required=True, metavar="YYYY-MM", help="UTC month")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            month = month_of_key(options["period"])
        except ValueError as exc:
            raise CommandError(f"--period: {exc}") from None
        try:
            account = provider_account_get(name=options["account"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        now = timezone.now()
        if now < month:
            raise CommandError(f"--period: {options['period']} has not started.")
        # the month's days up to today (so far) included
        end = min(month_day(month.year, month.month + 1).date(), now.date() + dt.timedelta(days=1))
        days = [month.date() + dt.timedelta(days=n) for n in range((end - month.date()).days)]
        result = reconcile_account_days(account=account, days=days, now=now)
        self.stdout.write(
            f"{account.name} {options['period']}: {len(days)} day(s); rows {result.created}"
            f" new, {result.updated} changed, {result.deleted} removed, {result.unchanged}"
            " unchanged"
        )
        summaries = reconciliation_days(account_id=account.pk, start=month.date(), end=end)
        if not summaries:
            self.stdout.write("no usage of ours or the provider's on these days")
        for summary in summaries:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.rows_by_status.items()))
            line = f"{summary.day}  {summary.status}  ({counts})"
            worst = summary.largest_drift
            if worst is not None:
                key = f" key {worst.api_key_id}" if worst.api_key_id else ""
                relative = (
                    f" ({worst.relative_drift.normalize():f})"
                    if worst.relative_drift is not None
                    else ""
                )
                line += (
                    f"  largest drift: {worst.upstream_model}{key} {worst.token_class}"
                    f" {worst.drift:+d}{relative}"
                )
                if worst.drift_equals_reasoning:
                    line += " = -reasoning"
            self.stdout.write(line)
