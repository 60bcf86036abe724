"""Celery tasks of metering: each calls one service and is safe to run twice."""

from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from config.celery import RELIABLE_TASK, TRANSIENT_ERRORS
from config.redis_clients import redis_client
from metering.control.counters import control_counters_rebuild as counters_rebuild
from metering.control.holdcaps import hold_caps_learn
from metering.ledger.partitions import partitions_maintain
from metering.ledger.rollups import usage_rollup_shards_fold
from metering.models import ProviderAccount
from metering.reconcile.sync import provider_account_sync, provider_accounts_due
from metering.routing.learn import learn_route_expectations as route_expectations_learn


@shared_task(name="metering.tasks.learn_hold_caps", **RELIABLE_TASK)
def learn_hold_caps(as_of: str | None = None) -> int:
    return hold_caps_learn(as_of=datetime.fromisoformat(as_of) if as_of else None)


@shared_task(name="metering.tasks.learn_route_expectations", **RELIABLE_TASK)
def learn_route_expectations(as_of: str | None = None) -> int:
    """Expected tokens and latency per routing target and effort (metering.routing.learn)."""
    return route_expectations_learn(datetime.fromisoformat(as_of) if as_of else None)


@shared_task(name="metering.tasks.control_counters_rebuild", **RELIABLE_TASK)
def control_counters_rebuild() -> int:
    """Give back what lost holds and dead processes' slices keep counted (metering.control.counters).
    It acts on Redis's counters as they are now, so it takes no `as_of`: a replay is a
    fresh run. Returns how many budgets were rebuilt."""
    if not settings.REDIS_URL:
        return 0
    client = redis_client(settings.REDIS_URL)
    try:
        return counters_rebuild(
            client=client, grace_s=settings.RECKON_CONTROL_HOLD_TTL_SECONDS
        ).rebuilt
    finally:
        client.close()


@shared_task(name="metering.tasks.ledger_retention", **RELIABLE_TASK)
def ledger_retention(as_of: str | None = None) -> int:
    """Fan out: one archive task per month past the retention still in the database
    (metering.ledger.archive). Returns how many were enqueued."""
    # The archive (pyarrow, boto3) is imported where it runs, not with this module, which
    # every process loads (the proxy too: see metering.apps).
    from metering.ledger.archive import ledger_months_due

    moment = datetime.fromisoformat(as_of) if as_of else timezone.now()
    months = ledger_months_due(as_of=moment)
    for month in months:
        ledger_archive_month.delay(month.isoformat())
    return len(months)


@shared_task(name="metering.tasks.ledger_archive_month", **RELIABLE_TASK)
def ledger_archive_month(month: str) -> str:
    """Export, verify and drop one month; resumes wherever a crashed run stopped."""
    from metering.ledger.archive import ledger_month_archive  # heavy: see ledger_retention

    return ledger_month_archive(month=datetime.fromisoformat(month)).state


@shared_task(name="metering.tasks.ledger_partitions_ensure", **RELIABLE_TASK)
def ledger_partitions_ensure(as_of: str | None = None) -> int:
    """Keep RECKON_LEDGER_PARTITIONS_AHEAD months of ledger partitions ready (PostgreSQL;
    a no-op on SQLite); logs an error when coverage is short. Returns how many were made."""
    maintained = partitions_maintain(
        ahead_months=settings.RECKON_LEDGER_PARTITIONS_AHEAD,
        now=datetime.fromisoformat(as_of) if as_of else None,
    )
    return len(maintained.created)


@shared_task(name="metering.tasks.fold_rollup_shards", **RELIABLE_TASK)
def fold_rollup_shards(as_of: str | None = None) -> int:
    """Fold the write shards of the rollup hours that closed more than
    RECKON_ROLLUP_FOLD_GRACE_SECONDS before `as_of` (default now) into shard 0
    (metering.ledger.rollups). Returns how many rows were merged away."""
    now = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    closed = now - timedelta(seconds=settings.RECKON_ROLLUP_FOLD_GRACE_SECONDS)
    # An hour is closed once it has ended: fold the hours that start an hour before.
    return usage_rollup_shards_fold(before=closed - timedelta(hours=1))


@shared_task(name="metering.tasks.provider_reports_sync_due", **RELIABLE_TASK)
def provider_reports_sync_due(as_of: str | None = None) -> int:
    """Fan out: one `provider_reports_sync` per active provider account, all as of the same
    instant (default now). Returns how many were enqueued."""
    moment = (datetime.fromisoformat(as_of) if as_of else timezone.now()).isoformat()
    accounts = provider_accounts_due()
    with provider_reports_sync.app.producer_or_acquire() as producer:
        for account_id in accounts:
            provider_reports_sync.apply_async((account_id, moment), producer=producer)
    return len(accounts)


@shared_task(
    name="metering.tasks.provider_reports_sync", autoretry_for=TRANSIENT_ERRORS, **RELIABLE_TASK
)
def provider_reports_sync(account_id: int, as_of: str | None = None) -> dict[str, int]:
    """Import one account's report window and reconcile the days that can have changed
    (metering.reconcile.sync); an inactive or deleted account is skipped, and so is one
    another run holds. The admin API's
    own retries happen inside the import; a failed import is not retried here (the next
    hourly run reads the window again)."""
    account = ProviderAccount.objects.filter(pk=account_id, is_active=True).first()
    if account is None:
        return {}
    result = provider_account_sync(
        account=account,
        now=datetime.fromisoformat(as_of) if as_of else timezone.now(),
    )
    if result is None:  # another run holds the account; the next hourly run catches up
        return {"skipped_busy": 1}
    return {
        "pages": result.imported.pages,
        "buckets_changed": result.imported.changed,
        "rows_created": result.reconciled.created,
        "rows_updated": result.reconciled.updated,
        "rows_deleted": result.reconciled.deleted,
        "days_changed": len(result.reconciled.changed_days),
    }
