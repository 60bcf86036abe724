"""One provider account brought up to date: import its report window, then reconcile the
days that can have changed (decision 0116, "Import algorithm" step 5).

The days reconciled are the settling window's (the last RECKON_PROVIDER_REPORT_SETTLE_DAYS
closed days and today), the days whose buckets the import changed, and the days whose rows
are still `pending` but have settled since the last run (so their final status is written
once, the run after they leave the window). A day the import re-reads only because a
bucket of it changed lately is reconciled when it changes again, not every hour. Usage the
ledger records late for a day outside these is picked up by the next `manage.py reconcile`
of its month. Both steps are idempotent, so a run may repeat.

One sync of an account at a time, import and reconcile together
(`metering.providers.locks`): a sync that finds the account busy does nothing, logs it and
returns None; the next hourly run catches up. Billing is told every day reconciled,
changed or not (`hooks.rows_changed`), so an alert lost to a failed handler fires on the
next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings

from metering.models import ProviderAccount, ReconciliationRow
from metering.providers.importer import (
    ImportResult,
    provider_import_window,
    provider_reports_import,
)
from metering.providers.locks import account_run_lock
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


logger = logging.getLogger(__name__)


def provider_account_sync(*, account: ProviderAccount, now: dt.datetime) -> SyncResult | None:
    """Import, then reconcile, holding the account's run lock throughout; None (nothing
    done) when another run holds it. An import that fails raises (`ProviderImportError`,
    with `account.last_error` set) and reconciles nothing: no bucket changed, and a pending
    day is not declared settled on a report that could not be re-read."""
    with account_run_lock(account_id=account.pk) as held:
        if not held:
            logger.info(
                "provider report sync of %s skipped: another run holds the account",
                account.name,
            )
            return None
        return _sync(account, now)


def _sync(account: ProviderAccount, now: dt.datetime) -> SyncResult:
    since, until = provider_import_window(account=account, now=now)
    imported = provider_reports_import(account=account, since=since, until=until)
    today = now.astimezone(dt.UTC).date()
    settle_days = max(0, int(settings.RECKON_PROVIDER_REPORT_SETTLE_DAYS))
    first = today - dt.timedelta(days=settle_days)
    window = {first + dt.timedelta(days=n) for n in range(settle_days + 1)}
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
