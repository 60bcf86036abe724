"""Which window an hourly run re-reads: the settling days plus today, reaching back to any
day whose buckets changed (not merely appeared) in the last 48 hours."""

import datetime as dt

import pytest

from metering.models import ProviderCostBucket, ProviderUsageBucket
from metering.providers.importer import provider_import_window, provider_reports_import
from tests.fakes.provider_admin import ServedEvent
from tests.metering.providers.conftest import DAY

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 20, 10, 30, tzinfo=dt.UTC)


def test_default_window_is_three_closed_days_plus_today(openai_account) -> None:  # type: ignore[no-untyped-def]
    since, until = provider_import_window(account=openai_account, now=NOW)
    assert since == dt.datetime(2026, 11, 17, tzinfo=dt.UTC)
    assert until == NOW


def test_settle_days_setting(openai_account, settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_PROVIDER_REPORT_SETTLE_DAYS = 0
    since, _ = provider_import_window(account=openai_account, now=NOW)
    assert since == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


@pytest.mark.parametrize(("changed_hours_ago", "extended"), [(1, True), (47, True), (49, False)])
def test_a_day_that_changed_recently_stays_in_the_window(
    openai_account, changed_hours_ago: int, extended: bool
) -> None:  # type: ignore[no-untyped-def]
    provider_reports_import(
        account=openai_account, since=DAY, until=DAY + dt.timedelta(days=2), reports=["usage"]
    )
    changed_at = NOW - dt.timedelta(hours=changed_hours_ago)
    ProviderUsageBucket.objects.filter(account=openai_account).update(
        changed_at=NOW - dt.timedelta(days=30)
    )
    latest = ProviderUsageBucket.objects.filter(account=openai_account).order_by("-bucket_start")[0]
    ProviderUsageBucket.objects.filter(pk=latest.pk).update(changed_at=changed_at, revision=2)

    since, _ = provider_import_window(account=openai_account, now=NOW)
    expected = (
        latest.bucket_start.replace(hour=0)
        if extended
        else dt.datetime(2026, 11, 17, tzinfo=dt.UTC)
    )
    assert since == expected


def test_cost_buckets_extend_the_window_too(openai_account) -> None:  # type: ignore[no-untyped-def]
    provider_reports_import(
        account=openai_account, since=DAY, until=DAY + dt.timedelta(days=1), reports=["cost"]
    )
    ProviderCostBucket.objects.filter(account=openai_account).update(
        changed_at=NOW - dt.timedelta(hours=3), revision=2
    )
    since, _ = provider_import_window(account=openai_account, now=NOW)
    assert since == DAY


def test_a_backfill_leaves_the_next_window_normal(openai_account, openai_fake) -> None:  # type: ignore[no-untyped-def]
    """Buckets merely created (a backfill of old days) do not extend the window; the same
    days revised by the provider do (review S7)."""
    provider_reports_import(account=openai_account, since=DAY, until=NOW)
    created = ProviderUsageBucket.objects.filter(account=openai_account)
    assert created.exists()
    assert not created.exclude(revision=1).exists()
    created.update(changed_at=NOW - dt.timedelta(hours=1))  # as if imported just now
    ProviderCostBucket.objects.filter(account=openai_account).update(
        changed_at=NOW - dt.timedelta(hours=1)
    )
    assert provider_import_window(account=openai_account, now=NOW)[0] == dt.datetime(
        2026, 11, 17, tzinfo=dt.UTC
    )

    openai_fake.add_usage(ServedEvent(DAY + dt.timedelta(hours=5), "gpt-r", "key_a", 9, 0, 0, 1, 2))
    result = provider_reports_import(account=openai_account, since=DAY, until=NOW)
    assert result.changed_days == {DAY.date()}
    ProviderUsageBucket.objects.filter(account=openai_account, revision__gt=1).update(
        changed_at=NOW - dt.timedelta(hours=1)
    )
    assert provider_import_window(account=openai_account, now=NOW)[0] == DAY


def test_other_accounts_changes_do_not_extend_the_window(openai_account, anthropic_account) -> None:  # type: ignore[no-untyped-def]
    provider_reports_import(
        account=anthropic_account, since=DAY, until=DAY + dt.timedelta(days=1), reports=["usage"]
    )
    ProviderUsageBucket.objects.update(changed_at=NOW)
    since, _ = provider_import_window(account=openai_account, now=NOW)
    assert since == dt.datetime(2026, 11, 17, tzinfo=dt.UTC)
