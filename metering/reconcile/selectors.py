"""Reads of reconciliation rows for the finance API, its CSV and the `reconcile` command.

Rows are listed by day, upstream model, key and class; a day's status is its worst row
(`compare.worst_status`). Callers wrap reporting reads in `config.db_router.reporting_reads`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import QuerySet

from config.errors import NotFound
from metering.models import ProviderAccount, ReconciliationRow
from metering.reconcile.compare import Status, worst_status


class UnknownProviderAccount(NotFound):
    code = "unknown_provider_account"


def provider_account_get(*, name: str) -> ProviderAccount:
    account = ProviderAccount.objects.filter(name=name).first()
    if account is None:
        raise UnknownProviderAccount(f"No provider account named {name!r}.")
    return account


def reconciliation_rows(
    *,
    start: dt.date,
    end: dt.date,
    account_id: int | None = None,
    status: str | None = None,
    upstream_model: str | None = None,
) -> QuerySet[ReconciliationRow]:
    """Rows of the UTC days [start, end), of one account or all."""
    rows = ReconciliationRow.objects.filter(day__gte=start, day__lt=end).select_related("account")
    if account_id is not None:
        rows = rows.filter(account_id=account_id)
    if status:
        rows = rows.filter(status=status)
    if upstream_model:
        rows = rows.filter(upstream_model=upstream_model)
    return rows.order_by("day", "account__name", "upstream_model", "api_key_id", "token_class")


@dataclass(frozen=True)
class DaySummary:
    day: dt.date
    status: Status | None  # the worst row's
    rows_by_status: dict[str, int]
    # The row with the largest |drift| (ties: the first listed), None without drift.
    largest_drift: ReconciliationRow | None


def reconciliation_days(*, account_id: int, start: dt.date, end: dt.date) -> list[DaySummary]:
    """One summary per day of [start, end) that has rows."""
    return _days(reconciliation_rows(start=start, end=end, account_id=account_id))


def _days(rows: Iterable[ReconciliationRow]) -> list[DaySummary]:
    by_day: dict[dt.date, list[ReconciliationRow]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    out = []
    for day, day_rows in sorted(by_day.items()):
        counts: dict[str, int] = {}
        for row in day_rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        drifting = [r for r in day_rows if r.drift]
        out.append(
            DaySummary(
                day=day,
                status=worst_status([r.status for r in day_rows]),
                rows_by_status=counts,
                largest_drift=max(drifting, key=lambda r: abs(r.drift or 0), default=None),
            )
        )
    return out


@dataclass(frozen=True)
class AccountSummary:
    """One provider account's reconciliation over a window (the staff page's section)."""

    account: ProviderAccount
    days: list[DaySummary]  # days with rows, oldest first
    settled: int  # days without a pending row
    unsettled: int  # days with a pending row
    by_status: list[tuple[str, int]]  # rows per status over the window, by status name
    worst: list[ReconciliationRow]  # the days' largest drifts, largest |drift| first


WORST_DRIFTS = 5


def reconciliation_summary(
    *, start: dt.date, end: dt.date, account_id: int | None = None
) -> list[AccountSummary]:
    """Per provider account (by name; one, or all), its days of [start, end) as
    `reconciliation_days` summarizes them, rolled up: rows per status, settled and
    unsettled days, the `WORST_DRIFTS` largest drifts. One query for the rows of every
    account, one for the accounts."""
    rows_of: dict[int, list[ReconciliationRow]] = {}
    for row in reconciliation_rows(start=start, end=end, account_id=account_id):
        rows_of.setdefault(row.account_id, []).append(row)
    accounts = ProviderAccount.objects.order_by("name")
    if account_id is not None:
        accounts = accounts.filter(pk=account_id)
    out = []
    for account in accounts:
        days = _days(rows_of.get(account.pk, []))
        by_status: dict[str, int] = {}
        for day in days:
            for status, n in day.rows_by_status.items():
                by_status[status] = by_status.get(status, 0) + n
        drifts = sorted(
            (d.largest_drift for d in days if d.largest_drift is not None),
            key=lambda r: -abs(r.drift or 0),
        )
        unsettled = sum(1 for d in days if Status.PENDING in d.rows_by_status)
        out.append(
            AccountSummary(
                account=account,
                days=days,
                settled=len(days) - unsettled,
                unsettled=unsettled,
                by_status=sorted(by_status.items()),
                worst=drifts[:WORST_DRIFTS],
            )
        )
    return out
