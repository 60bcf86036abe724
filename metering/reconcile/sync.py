"""One provider account brought up to date: import its report window, then reconcile the
days that can have changed (decision 0116, "Import algorithm" step 5).

The days reconciled are the import window's (the settling days and today), the days whose
buckets the import changed, and the days whose rows are still `pending` but have settled
since the last run (so their final status is written once, the run after they leave the
window). Billing is told every day reconciled, changed or not (`hooks.rows_changed`), so
an alert lost to a failed handler fires on the next run. Usage the ledger records late for a day outside these is picked up by the next
`manage.py reconcile` of its month. Both steps are idempotent, so a run may repeat.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from metering.models import ProviderAccount, ReconciliationRow
from metering.providers.importer import (
    ImportResult,
    provider_import_window,
    provider_reports_import,
)
from metering.reconcile.service import (
    ReconcileResult,
    day_settled,
    days_last_changed,
    reconcile_account_days,
)


@dataclass(frozen=True)
class SyncResult:
    imported: ImportResult
    reconciled: ReconcileResult


def provider_account_sync(*, account: ProviderAccount, now: dt.datetime) -> SyncResult:
    """Import, then reconcile. An import that fails raises (`ProviderImportError`, with
    `account.last_error` set) and reconciles nothing: no bucket changed, and a pending
    day is not declared settled on a report that could not be re-read."""
    since, until = provider_import_window(account=account, now=now)
    imported = provider_reports_import(account=account, since=since, until=until)
    first = since.astimezone(dt.UTC).date()
    window = {
        first + dt.timedelta(days=n)
        for n in range((now.astimezone(dt.UTC).date() - first).days + 1)
    }
    pending = set(
        ReconciliationRow.objects.filter(
            account=account, status=ReconciliationRow.Status.PENDING, day__lt=first
        )
        .values_list("day", flat=True)
        .distinct()
    )
    changed = days_last_changed(account=account, days=pending)
    settled = {
        day for day in pending if day_settled(day=day, now=now, last_changed=changed.get(day))
    }
    reconciled = reconcile_account_days(
        account=account, days=window | imported.changed_days | settled, now=now
    )
    return SyncResult(imported=imported, reconciled=reconciled)


def provider_accounts_due() -> list[int]:
    """The accounts the hourly run syncs: the active ones."""
    return list(ProviderAccount.objects.filter(is_active=True).values_list("pk", flat=True))
