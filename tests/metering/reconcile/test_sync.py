"""The hourly sync (metering.reconcile.sync and its Celery tasks) against the fake admin
API on loopback: import the window, reconcile the days that can have changed, write each
settled day's final status the run after it leaves the window; a failed import changes
nothing."""

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.db import connections as db_connections

from metering.models import ProviderAccount, ProviderUsageBucket, ReconciliationRow
from metering.providers import importer
from metering.providers.importer import (
    ProviderAccountBusy,
    ProviderImportError,
    provider_reports_import,
)
from metering.reconcile import hooks
from metering.reconcile.sync import SyncResult, provider_account_sync
from metering.tasks import provider_reports_sync_due
from tests.fakes.provider_admin import FakeProviderAdmin, ServedEvent
from tests.metering.conftest import reasoner_served

pytestmark = pytest.mark.django_db

DAY = date(2026, 10, 7)
T0 = datetime(2026, 10, 7, 9, 15, tzinfo=UTC)
ADMIN_KEY = "sk-admin-sync-test"


@pytest.fixture
def fake(monkeypatch, settings) -> Iterator[FakeProviderAdmin]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SYNC_ADMIN_KEY", ADMIN_KEY)
    settings.RECKON_PROVIDER_RETRY_BASE_SECONDS = 0.01
    settings.RECKON_PROVIDER_RETRY_MAX_SECONDS = 0.02
    with FakeProviderAdmin("openai", admin_key=ADMIN_KEY) as server:
        yield server


@pytest.fixture
def account(fake: FakeProviderAdmin) -> ProviderAccount:
    account = ProviderAccount.objects.create(
        name="oa", provider="openai", admin_key_env="SYNC_ADMIN_KEY", admin_base_url=fake.url
    )
    reasoner_served(
        account,
        T0,
        input_tokens=100,
        cached_input_tokens=20,
        output_tokens=30,
        reasoning_tokens=70,
    )
    fake.events.append(
        gpt_r(
            T0 + timedelta(seconds=3),
            "key_a",
            uncached_input=100,
            cache_read=20,
            output=30,
            reasoning=70,
        )
    )
    return account


def gpt_r(at: datetime, api_key_id: str, **counts: int) -> ServedEvent:
    """A gpt-r generation the provider metered on its key `api_key_id`."""
    return ServedEvent(at=at, model="gpt-r", api_key_id=api_key_id, **counts)


def sync_at(account: ProviderAccount, now: datetime):  # type: ignore[no-untyped-def]
    """A sync as the hourly run at `now` does it: the importer's clock (which stamps the
    buckets' `changed_at`) reads `now` too."""
    with time_machine.travel(now):
        return provider_account_sync(account=account, now=now)


def statuses(account: ProviderAccount) -> dict[str, str]:
    return dict(
        ReconciliationRow.objects.filter(account=account, day=DAY).values_list(
            "token_class", "status"
        )
    )


def test_a_day_is_pending_in_the_window_and_final_the_run_after_it_settles(
    account, told, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        first = sync_at(account, datetime(2026, 10, 7, 18, tzinfo=UTC))
    assert first.imported.changed > 0 and DAY in first.reconciled.changed_days
    assert set(statuses(account).values()) == {"pending", "not_compared"}
    # three closed days later the day is still re-read (and pending)
    with django_capture_on_commit_callbacks(execute=True):
        sync_at(account, datetime(2026, 10, 10, 23, tzinfo=UTC))
    assert set(statuses(account).values()) == {"pending", "not_compared"}
    # out of the window: its rows are written final once
    with django_capture_on_commit_callbacks(execute=True):
        last = sync_at(account, datetime(2026, 10, 11, 1, tzinfo=UTC))
    assert DAY in last.reconciled.changed_days
    assert statuses(account) == {
        "requests": "matched",
        "input_uncached": "matched",
        "cache_read": "matched",
        "cache_write": "not_compared",
        "output": "matched",
    }
    # billing is told every reconciled day each run (B1): DAY while in the window, then
    # the run that writes it final
    assert [DAY in days for _, days in told] == [True, True, True]
    with django_capture_on_commit_callbacks(execute=True):
        again = sync_at(account, datetime(2026, 10, 11, 2, tzinfo=UTC))
    assert again.reconciled.changed_days == ()  # final: no row changes again


def test_the_beat_task_fans_out_to_active_accounts_as_of_one_instant(account, fake, told) -> None:  # type: ignore[no-untyped-def]
    ProviderAccount.objects.create(
        name="off", provider="openai", admin_key_env="UNSET_VAR", is_active=False
    )
    fake.drop_reasoning = True
    with time_machine.travel(datetime(2026, 10, 8, 0, 30, tzinfo=UTC)):
        assert provider_reports_sync_due(as_of="2026-10-08T00:30:00+00:00") == 1
    assert statuses(account)["output"] == "pending"
    with time_machine.travel(datetime(2026, 10, 11, 0, 30, tzinfo=UTC)):
        assert provider_reports_sync_due(as_of="2026-10-11T00:30:00+00:00") == 1
    output = ReconciliationRow.objects.get(account=account, day=DAY, token_class="output")
    assert (output.ours, output.theirs, output.drift, output.status) == (100, 30, -70, "drift")
    assert output.drift_equals_reasoning


def test_a_failed_import_reconciles_nothing(account, fake, told) -> None:  # type: ignore[no-untyped-def]
    provider_account_sync(account=account, now=datetime(2026, 10, 7, 18, tzinfo=UTC))
    before = list(ReconciliationRow.objects.values_list("id", "status", "computed_at"))
    fake.fail_page(1, 500)
    with pytest.raises(ProviderImportError):
        provider_account_sync(account=account, now=datetime(2026, 10, 12, tzinfo=UTC))
    assert list(ReconciliationRow.objects.values_list("id", "status", "computed_at")) == before
    account.refresh_from_db()
    assert account.last_error and ADMIN_KEY not in account.last_error


def test_an_alert_lost_to_a_failed_handler_fires_on_the_next_run(
    account, fake, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """Review B1: the handler fails once (a transient error, or the worker is killed after
    the rows commit); the next runs find the rows unchanged and still fire the alert."""
    from billing.models import Alert

    fake.events.append(gpt_r(T0 + timedelta(minutes=5), "key_leak", uncached_input=500, output=10))
    real = list(hooks._handlers)

    def fails(account_id: int, days: list[date]) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(hooks, "_handlers", [fails])
    with django_capture_on_commit_callbacks(execute=True):
        sync_at(account, datetime(2026, 10, 7, 18, tzinfo=UTC))
    assert ReconciliationRow.objects.filter(status="missing_in_ledger").exists()
    assert not Alert.objects.filter(kind="reconciliation").exists()
    monkeypatch.setattr(hooks, "_handlers", real)
    for hour in (19, 20):
        with django_capture_on_commit_callbacks(execute=True):
            result = sync_at(account, datetime(2026, 10, 7, hour, tzinfo=UTC))
        assert result.reconciled.changed_days == ()
    leaks = Alert.objects.filter(kind="reconciliation", details__api_key_id="key_leak")
    assert list(leaks.values_list("details__status", flat=True)) == ["missing_in_ledger"]


def test_after_a_backfill_the_sync_reads_and_reconciles_the_normal_window(
    account, fake, told
) -> None:  # type: ignore[no-untyped-def]
    """A backfill creates buckets (revision 1): it is no change, so the next hourly run
    reads and reconciles the settling window only, not every day back to the backfill. A
    revised old day is re-read for 48 hours but reconciled only when it changes (review S7)."""
    old = datetime(2026, 9, 10, 5, tzinfo=UTC)
    fake.events.append(gpt_r(old, "key_a", uncached_input=5))
    provider_reports_import(
        account=account,
        since=datetime(2026, 9, 1, tzinfo=UTC),
        until=datetime(2026, 10, 9, tzinfo=UTC),
    )
    assert ProviderUsageBucket.objects.filter(account=account, bucket_start__lt=T0).exists()
    normal = {date(2026, 10, d) for d in (6, 7, 8, 9)}

    result = provider_account_sync(account=account, now=datetime(2026, 10, 9, 18, tzinfo=UTC))
    assert result is not None
    assert result.imported.since == datetime(2026, 10, 6, tzinfo=UTC)
    assert set(result.reconciled.days) == normal

    fake.add_usage(gpt_r(old, "key_a", uncached_input=1))
    provider_reports_import(
        account=account,
        since=datetime(2026, 9, 10, tzinfo=UTC),
        until=datetime(2026, 9, 11, tzinfo=UTC),
    )  # the provider revised Sep 10; an import saw it just now
    now = datetime.now(UTC) + timedelta(hours=1)
    revised = provider_account_sync(account=account, now=now)
    assert revised is not None
    assert revised.imported.since == datetime(2026, 9, 10, tzinfo=UTC)  # re-read for 48 h
    window = {now.date() - timedelta(days=n) for n in range(4)}
    # Sep 10 is unchanged this run: not reconciled; Oct 7's pending rows have settled
    assert set(revised.reconciled.days) == window | {DAY}


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_one_account_never_overlap(account, fake, told, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two real runs on PostgreSQL (two connections): while one sync holds the account
    (here: paused inside its first page read), a second sync does nothing and says so, a
    manual import is refused with a clear Conflict; once the first has finished, the next
    run goes ahead (review S5)."""
    if connection.vendor != "postgresql":
        pytest.skip("the run lock is PostgreSQL's; SQLite runs one process")
    reading, release = threading.Event(), threading.Event()
    real_get = importer.admin_get

    def paused_get(url: str, **kwargs: Any) -> Any:
        if threading.current_thread().name == "first" and not reading.is_set():
            reading.set()
            assert release.wait(30)
        return real_get(url, **kwargs)

    monkeypatch.setattr(importer, "admin_get", paused_get)
    outcome: dict[str, Any] = {}

    def first() -> None:
        try:
            outcome["first"] = provider_account_sync(
                account=ProviderAccount.objects.get(pk=account.pk),
                now=datetime(2026, 10, 7, 18, tzinfo=UTC),
            )
        except BaseException as exc:  # reported to the test below
            outcome["first"] = exc
        finally:
            db_connections.close_all()

    thread = threading.Thread(target=first, name="first")
    thread.start()
    try:
        assert reading.wait(30)
        second = provider_account_sync(account=account, now=datetime(2026, 10, 7, 18, tzinfo=UTC))
        assert second is None
        with pytest.raises(ProviderAccountBusy, match="being imported by another run"):
            provider_reports_import(
                account=account,
                since=datetime(2026, 10, 7, tzinfo=UTC),
                until=datetime(2026, 10, 8, tzinfo=UTC),
            )
        assert not ProviderUsageBucket.objects.filter(account=account).exists()
    finally:
        release.set()
        thread.join(60)
    first_result = outcome["first"]
    assert isinstance(first_result, SyncResult), first_result
    assert first_result.imported.created > 0
    account.refresh_from_db()
    assert account.last_error == ""  # a busy account is no failure
    again = provider_account_sync(account=account, now=datetime(2026, 10, 7, 19, tzinfo=UTC))
    assert again is not None and again.imported.changed == 0
