"""Reconciliation rows (metering.reconcile.service) from real rollups and imported buckets:
the groups per model and key, statuses as days settle, idempotent writes that tell billing
only the days that changed, `explain`, and how errors, disconnects and cut streams count."""

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import (
    Alias,
    ProviderAccount,
    ProviderReportFetch,
    ProviderUsageBucket,
    ReconciliationRow,
    Route,
)
from metering.providers.importer import CHANGE_SETTLE
from metering.reconcile.service import day_settled, reconcile_account_days
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db

DAY = date(2026, 10, 7)
T0 = datetime(2026, 10, 7, 9, tzinfo=UTC)
SETTLED = datetime(2026, 10, 12, tzinfo=UTC)  # past the 3 settling days
PENDING = datetime(2026, 10, 8, 12, tzinfo=UTC)


@pytest.fixture
def openai() -> ProviderAccount:
    return ProviderAccount.objects.create(name="oa", provider="openai", admin_key_env="OA_ADMIN")


@pytest.fixture
def anthropic() -> ProviderAccount:
    return ProviderAccount.objects.create(name="an", provider="anthropic", admin_key_env="AN_ADMIN")


def route(account: ProviderAccount, alias: str, model: str, key_id: str = "") -> Route:
    return Route.objects.create(
        alias=Alias.objects.get_or_create(name=alias)[0],
        provider=account.provider,
        base_url="https://api.example.com/v1",
        upstream_model=model,
        provider_account=account,
        upstream_key_id=key_id,
    )


def use(account: ProviderAccount, alias: str, model: str, at: datetime = T0, **values):  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    return write_usage(
        key,
        at,
        alias=alias,
        upstream_model=model,
        provider=account.provider,
        provider_account_id=account.pk,
        **values,
    )


def bucket(
    account: ProviderAccount,
    model: str,
    key_id: str = "",
    at: datetime = T0,
    width: str = "1h",
    revision: int = 1,
    **counts: int | None,
) -> ProviderUsageBucket:
    fetch = ProviderReportFetch.objects.create(
        account=account,
        report="usage",
        run_id=uuid.uuid4(),
        query="/organization/usage/completions",
        http_status=200,
        body="{}",
        body_sha256=hashlib.sha256(b"{}").hexdigest(),
        fetched_at=at,
    )
    defaults: dict[str, int | None] = {
        "requests": 0,
        "input_uncached_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": None if account.provider == "openai" else 0,
        "output_tokens": 0,
    }
    if account.provider == "anthropic":
        defaults["requests"] = None
    bucket, _ = ProviderUsageBucket.objects.update_or_create(
        account=account,
        bucket_start=at.replace(minute=0, second=0, microsecond=0),
        bucket_width=width,
        model=model,
        api_key_id=key_id,
        service_tier="",
        workspace="",
        defaults={
            **defaults,
            **counts,
            "fetch": fetch,
            "revision": revision,
            "content_hash": str(revision),
            "changed_at": at,
        },
    )
    return bucket


def rows(account: ProviderAccount, **filters) -> dict[tuple[str, str, str], ReconciliationRow]:  # type: ignore[no-untyped-def]
    return {
        (r.upstream_model, r.api_key_id, r.token_class): r
        for r in ReconciliationRow.objects.filter(account=account, **filters)
    }


def summary(account: ProviderAccount) -> dict[tuple[str, str, str], tuple]:  # type: ignore[type-arg]
    return {k: (r.ours, r.theirs, r.status) for k, r in rows(account).items()}


def test_everything_matches_to_the_token_and_a_rerun_changes_nothing(
    openai, told, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(
        openai,
        "reasoner",
        "gpt-r",
        input_tokens=100,
        cached_input_tokens=20,
        cache_write_tokens=5,
        output_tokens=30,
        reasoning_tokens=70,
    )
    use(
        openai,
        "reasoner",
        "gpt-r",
        at=T0 + timedelta(hours=2),
        input_tokens=10,
        output_tokens=3,
        reasoning_tokens=7,
    )
    bucket(
        openai,
        "gpt-r",
        "key_a",
        requests=1,
        input_uncached_tokens=105,
        cache_read_tokens=20,
        output_tokens=100,
    )
    bucket(
        openai,
        "gpt-r",
        "key_a",
        at=T0 + timedelta(hours=2),
        requests=1,
        input_uncached_tokens=10,
        output_tokens=10,
    )
    with django_capture_on_commit_callbacks(execute=True):
        result = reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert summary(openai) == {
        ("gpt-r", "key_a", "requests"): (2, 2, "matched"),
        ("gpt-r", "key_a", "input_uncached"): (115, 115, "matched"),
        ("gpt-r", "key_a", "cache_read"): (20, 20, "matched"),
        ("gpt-r", "key_a", "cache_write"): (5, None, "not_compared"),
        ("gpt-r", "key_a", "output"): (110, 110, "matched"),
    }
    assert (result.created, result.changed_days) == (5, (DAY,))
    assert told == [(openai.pk, [DAY])]
    assert all(r.explain == {} and r.report_revision == 1 for r in rows(openai).values())
    with django_capture_on_commit_callbacks(execute=True):
        again = reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert (again.created, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 5)
    # nothing changed, and billing is still told the day (its alerts are idempotent: an
    # alert lost to a failed handler fires on this run)
    assert again.changed_days == ()
    assert told == [(openai.pk, [DAY]), (openai.pk, [DAY])]


def test_a_report_that_drops_reasoning_drifts_by_it(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30, reasoning_tokens=70)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    output = rows(openai)[("gpt-r", "key_a", "output")]
    assert (output.ours, output.theirs, output.drift, output.status) == (100, 30, -70, "drift")
    assert output.reasoning == 70 and output.drift_equals_reasoning
    assert str(output.relative_drift) == "-2.333333333333"
    assert output.explain["source"] == "ledger"
    assert output.explain["incomplete"]["records"] == 0


def test_a_key_no_route_declares_is_missing_in_ledger_at_once(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_leaked", requests=4, input_uncached_tokens=999, output_tokens=5)
    bucket(openai, "gpt-other", "key_leaked", requests=1, input_uncached_tokens=1, output_tokens=1)
    reconcile_account_days(account=openai, days=[DAY], now=PENDING)  # still settling
    found = rows(openai)
    assert {k: r.status for k, r in found.items() if k[1] == "key_leaked"} == {
        ("gpt-r", "key_leaked", "requests"): "missing_in_ledger",
        ("gpt-r", "key_leaked", "input_uncached"): "missing_in_ledger",
        ("gpt-r", "key_leaked", "cache_read"): "pending",  # 0 against 0
        ("gpt-r", "key_leaked", "cache_write"): "not_compared",
        ("gpt-r", "key_leaked", "output"): "missing_in_ledger",
        ("gpt-other", "key_leaked", "requests"): "missing_in_ledger",
        ("gpt-other", "key_leaked", "input_uncached"): "missing_in_ledger",
        ("gpt-other", "key_leaked", "cache_read"): "pending",
        ("gpt-other", "key_leaked", "cache_write"): "not_compared",
        ("gpt-other", "key_leaked", "output"): "missing_in_ledger",
    }
    assert found[("gpt-r", "key_a", "output")].status == "pending"
    assert found[("gpt-r", "key_leaked", "requests")].theirs == 4


def test_a_day_is_pending_until_it_settles_then_billing_hears_of_it_again(
    openai, told, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    assert not day_settled(day=DAY, now=datetime(2026, 10, 10, 23, 59, tzinfo=UTC))
    assert day_settled(day=DAY, now=datetime(2026, 10, 11, tzinfo=UTC))
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_account_days(account=openai, days=[DAY], now=PENDING)
    assert {r.status for r in rows(openai).values()} == {"pending", "not_compared"}
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert {r.status for r in rows(openai).values()} == {"matched", "not_compared"}
    assert told == [(openai.pk, [DAY]), (openai.pk, [DAY])]


def test_a_late_revision_changes_the_row(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert rows(openai)[("gpt-r", "key_a", "output")].status == "matched"
    bucket(
        openai,
        "gpt-r",
        "key_a",
        revision=2,
        requests=1,
        input_uncached_tokens=100,
        output_tokens=45,
    )
    result = reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    output = rows(openai)[("gpt-r", "key_a", "output")]
    assert (output.theirs, output.drift, output.status, output.report_revision) == (
        45,
        15,
        "drift",
        2,
    )
    assert result.updated == 5  # every row of the group carries the new revision
    assert output.computed_at == SETTLED


def test_routes_without_a_key_id_compare_summed_over_keys(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r")  # no upstream key id
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    use(openai, "reasoner", "gpt-r", input_tokens=50, output_tokens=10)
    bucket(openai, "gpt-r", "key_1", requests=1, input_uncached_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_2", requests=1, input_uncached_tokens=50, output_tokens=10)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert summary(openai) == {
        ("gpt-r", "", "requests"): (2, 2, "matched"),
        ("gpt-r", "", "input_uncached"): (150, 150, "matched"),
        ("gpt-r", "", "cache_read"): (0, 0, "matched"),
        ("gpt-r", "", "cache_write"): (0, None, "not_compared"),
        ("gpt-r", "", "output"): (40, 40, "matched"),
    }


def test_rows_of_a_group_that_no_longer_exists_are_removed(openai, told) -> None:  # type: ignore[no-untyped-def]
    r = route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    r.upstream_key_id = ""
    r.save()
    result = reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert (result.created, result.deleted) == (5, 5)
    assert {k[1] for k in rows(openai)} == {""}


def test_the_report_model_name_maps_to_ours(openai, told) -> None:  # type: ignore[no-untyped-def]
    openai.model_map = {"gpt-r-2026-08-01": "gpt-r"}
    openai.save()
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(
        openai, "gpt-r-2026-08-01", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30
    )
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert {r.status for r in rows(openai).values()} == {"matched", "not_compared"}


def test_usage_the_report_lacks_is_missing_in_report(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    found = rows(openai)
    assert found[("gpt-r", "key_a", "output")].status == "missing_in_report"
    assert found[("gpt-r", "key_a", "cache_read")].status == "matched"  # 0 and nothing
    assert found[("gpt-r", "key_a", "output")].report_revision == 0


def test_a_day_is_read_at_its_finest_bucket_width(openai, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    bucket(
        openai,
        "gpt-r",
        "key_a",
        at=datetime(2026, 10, 7, tzinfo=UTC),
        width="1d",
        requests=1,
        input_uncached_tokens=100,
        output_tokens=30,
    )
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert rows(openai)[("gpt-r", "key_a", "requests")].theirs == 1


def test_anthropic_compares_cache_writes_and_not_requests(anthropic, told) -> None:  # type: ignore[no-untyped-def]
    route(anthropic, "thinker", "claude-t", "apikey_1")
    use(
        anthropic,
        "thinker",
        "claude-t",
        input_tokens=100,
        cached_input_tokens=40,
        cache_write_tokens=60,
        output_tokens=30,
        reasoning_tokens=50,
    )
    bucket(
        anthropic,
        "claude-t",
        "apikey_1",
        input_uncached_tokens=100,
        cache_read_tokens=40,
        cache_write_tokens=60,
        output_tokens=80,
    )
    reconcile_account_days(account=anthropic, days=[DAY], now=SETTLED)
    assert summary(anthropic) == {
        ("claude-t", "apikey_1", "requests"): (1, None, "not_compared"),
        ("claude-t", "apikey_1", "input_uncached"): (100, 100, "matched"),
        ("claude-t", "apikey_1", "cache_read"): (40, 40, "matched"),
        ("claude-t", "apikey_1", "cache_write"): (60, 60, "matched"),
        ("claude-t", "apikey_1", "output"): (80, 80, "matched"),
    }


def test_errors_disconnects_and_cut_streams_count_as_decided_and_explain_says_so(
    openai, told
) -> None:  # type: ignore[no-untyped-def]
    """Upstream errors and failures are no request of ours, their tokens (0 here) count;
    a client disconnect counts in full; a cut stream counts what was seen, so a provider
    billing the whole generation shows as drift that `explain` accounts for."""
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30, reasoning_tokens=20)
    use(openai, "reasoner", "gpt-r", status="upstream_error", upstream_status=500)
    use(openai, "reasoner", "gpt-r", status="failed", upstream_status=0)
    use(
        openai,
        "reasoner",
        "gpt-r",
        input_tokens=10,
        output_tokens=5,
        reasoning_tokens=5,
        client_disconnected=True,
    )
    use(
        openai,
        "reasoner",
        "gpt-r",
        status="incomplete",
        input_tokens=10,
        output_tokens=4,
        reasoning_tokens=6,
    )
    # the provider served the cut stream in full: 8 more output tokens than we saw
    bucket(openai, "gpt-r", "key_a", requests=3, input_uncached_tokens=120, output_tokens=78)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    found = rows(openai)
    assert (
        found[("gpt-r", "key_a", "requests")].ours,
        found[("gpt-r", "key_a", "requests")].status,
    ) == (3, "matched")
    assert found[("gpt-r", "key_a", "input_uncached")].status == "matched"
    output = found[("gpt-r", "key_a", "output")]
    assert (output.ours, output.theirs, output.drift, output.status) == (70, 78, 8, "drift")
    assert output.explain == {
        "source": "ledger",
        "incomplete": {
            "records": 1,
            "input_tokens": 10,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 4,
            "reasoning_tokens": 6,
        },
        "client_disconnected": {
            "records": 1,
            "input_tokens": 10,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": 5,
        },
        "failed": {
            "records": 1,
            "input_tokens": 0,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
        },
        "upstream_error": {
            "records": 1,
            "input_tokens": 0,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
        },
    }
    assert found[("gpt-r", "key_a", "requests")].explain == {}  # matched rows need none


def test_only_the_account_s_own_usage_and_days_count(openai, anthropic, told) -> None:  # type: ignore[no-untyped-def]
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    use(openai, "reasoner", "gpt-r", at=T0 + timedelta(days=1), input_tokens=7)  # next day
    use(anthropic, "reasoner", "gpt-r", input_tokens=5)  # another account's stamp
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=30)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert {r.status for r in rows(openai).values()} == {"matched", "not_compared"}
    assert set(ReconciliationRow.objects.values_list("day", flat=True)) == {DAY}


def test_a_day_the_import_still_re_reads_is_pending_past_the_settling_days(openai, told) -> None:  # type: ignore[no-untyped-def]
    """Review S6: the provider revised a bucket of the day recently, so the import keeps
    re-reading it (CHANGE_SETTLE) and its rows stay pending (no drift alert on an
    intermediate value); settled once the buckets stop changing for CHANGE_SETTLE."""
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30)
    revised = SETTLED - timedelta(hours=1)  # revised an hour before the run
    bucket(openai, "gpt-r", "key_a", at=T0, requests=1, input_uncached_tokens=100, output_tokens=45)
    ProviderUsageBucket.objects.filter(account=openai).update(changed_at=revised, revision=2)
    assert not day_settled(day=DAY, now=SETTLED, last_changed=revised)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    output = rows(openai)[("gpt-r", "key_a", "output")]
    assert (output.drift, output.status, output.explain) == (15, "pending", {})
    later = revised + CHANGE_SETTLE
    assert day_settled(day=DAY, now=later, last_changed=revised)
    reconcile_account_days(account=openai, days=[DAY], now=later)
    assert rows(openai)[("gpt-r", "key_a", "output")].status == "drift"


def test_a_pending_day_is_never_explained_from_the_raw_ledger(openai, told) -> None:  # type: ignore[no-untyped-def]
    """Review S8: today's rows nearly always differ (the report lags); explaining them
    would read today's raw records every hour."""
    route(openai, "reasoner", "gpt-r", "key_a")
    use(openai, "reasoner", "gpt-r", input_tokens=100, output_tokens=30, status="incomplete")
    bucket(openai, "gpt-r", "key_a", requests=1, input_uncached_tokens=100, output_tokens=99)
    with CaptureQueriesContext(connection) as queries:
        reconcile_account_days(account=openai, days=[DAY], now=PENDING)
    assert not [q for q in queries.captured_queries if '"metering_usagerecord"' in q["sql"]]
    output = rows(openai)[("gpt-r", "key_a", "output")]
    assert (output.status, output.explain) == ("pending", {})
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    output = rows(openai)[("gpt-r", "key_a", "output")]
    assert output.status == "drift" and output.explain["incomplete"]["records"] == 1


def test_a_group_of_only_upstream_errors_is_not_a_leak(openai, told) -> None:  # type: ignore[no-untyped-def]
    """Review S10: every request of the day got a 5xx; the provider counts them. Reckon
    forwarded them all: drift, not missing_in_ledger."""
    route(openai, "reasoner", "gpt-r", "key_a")
    for _ in range(2):
        use(
            openai,
            "reasoner",
            "gpt-r",
            status="upstream_error",
            upstream_status=500,
            input_tokens=0,
            output_tokens=0,
            reasoning_tokens=0,
        )
    bucket(openai, "gpt-r", "key_a", requests=2, input_uncached_tokens=60, output_tokens=0)
    reconcile_account_days(account=openai, days=[DAY], now=PENDING)
    found = rows(openai)
    assert found[("gpt-r", "key_a", "requests")].ours == 0
    assert "missing_in_ledger" not in {r.status for r in found.values()}
