"""Reads of reconciliation rows for the finance API, its CSV and the `reconcile` command.

Rows are listed by day, upstream model, key and class; a day's status is its worst row
(`compare.worst_status`). Callers wrap reporting reads in `config.db_router.reporting_reads`.
"""

from __future__ import annotations

import datetime as dt
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
    by_day: dict[dt.date, list[ReconciliationRow]] = {}
    for row in reconciliation_rows(start=start, end=end, account_id=account_id):
        by_day.setdefault(row.day, []).append(row)
    out = []
    for day, rows in sorted(by_day.items()):
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        drifting = [r for r in rows if r.drift]
        out.append(
            DaySummary(
                day=day,
                status=worst_status([r.status for r in rows]),
                rows_by_status=counts,
                largest_drift=max(drifting, key=lambda r: abs(r.drift or 0), default=None),
            )
        )
    return out
