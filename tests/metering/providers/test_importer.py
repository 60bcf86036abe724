"""The import service against the fake admin APIs on loopback: pages, idempotency,
revisions, removals, retries and failures that change nothing."""

import datetime as dt
import json
import socket
from decimal import Decimal

import pytest
from django.db import connection

from metering.models import (
    ProviderAccount,
    ProviderBucketRevision,
    ProviderCostBucket,
    ProviderReportFetch,
    ProviderUsageBucket,
)
from metering.providers import anthropic_reports, importer
from metering.providers.importer import ProviderImportError, provider_reports_import
from metering.providers.reports import amount_usd_from_text, content_hash
from tests.fakes.provider_admin import ServedEvent
from tests.metering.providers.conftest import ANTHROPIC_KEY, DAY, OPENAI_ENV, OPENAI_KEY, at

pytestmark = pytest.mark.django_db

SINCE = DAY
UNTIL = DAY + dt.timedelta(days=2)


def exact(bucket: ProviderCostBucket) -> Decimal:
    """The bucket's exact USD: `amount_usd` on PostgreSQL; on SQLite (which keeps numerics
    as floats) it is rebuilt from the verbatim text, and `amount_usd` is near it."""
    value = amount_usd_from_text(provider=bucket.account.provider, amount_text=bucket.amount_text)
    if connection.vendor == "postgresql":
        assert bucket.amount_usd == value
    else:
        assert abs(bucket.amount_usd - value) < Decimal("1e-15")
    return value


def run(account: ProviderAccount, since: dt.datetime = SINCE, until: dt.datetime = UNTIL, **kw):  # type: ignore[no-untyped-def]
    return provider_reports_import(account=account, since=since, until=until, **kw)


def snapshot(account: ProviderAccount) -> list[tuple]:
    usage = ProviderUsageBucket.objects.filter(account=account).order_by("id")
    cost = ProviderCostBucket.objects.filter(account=account).order_by("id")
    return [
        *[(b.id, b.revision, b.content_hash, b.fetch_id, b.changed_at) for b in usage],
        *[(b.id, b.revision, b.content_hash, b.fetch_id, b.changed_at) for b in cost],
    ]


def test_openai_import_stores_buckets_in_reckon_classes_and_exact_costs(
    openai_account: ProviderAccount, openai_fake
) -> None:  # type: ignore[no-untyped-def]
    result = run(openai_account)
    assert result.pages == 2  # one usage page (48 hours) and one cost page
    assert result.changed == result.created > 0 and result.removed == 0
    assert result.changed_days == {DAY.date(), (DAY + dt.timedelta(days=1)).date()}

    hour_1 = ProviderUsageBucket.objects.get(
        account=openai_account, bucket_start=at(0, 1), api_key_id="key_a"
    )
    # two events in that hour: (100+10) uncached, 40 cached, 8 cache write, (30+70)+(5+0) output
    assert hour_1.input_uncached_tokens == 110 + 8  # OpenAI counts cache writes as input
    assert hour_1.cache_read_tokens == 40
    assert hour_1.cache_write_tokens is None
    assert hour_1.output_tokens == 105
    assert hour_1.requests == 2
    assert hour_1.model == "gpt-r" and hour_1.workspace == "proj_default"
    assert hour_1.bucket_width == "1h" and hour_1.revision == 1
    assert hour_1.fetch.report == "usage" and hour_1.fetch.http_status == 200

    costs = ProviderCostBucket.objects.filter(account=openai_account)
    assert sum(exact(c) for c in costs) == openai_fake.expected_cost()
    day_input = costs.get(bucket_start=DAY, line_item="gpt-r, input")
    assert day_input.model == "gpt-r" and day_input.token_type == "input"
    expected = Decimal(110 + 8 + 7) * Decimal("1.234567890123456789") / 1_000_000
    assert exact(day_input) == expected  # 24 decimal places, exact
    assert day_input.amount_text == str(expected)
    assert f'"value":{expected}' in day_input.fetch.body  # the body is the text received

    openai_account.refresh_from_db()
    assert openai_account.last_error == "" and openai_account.last_import_at is not None


def test_anthropic_import_nested_and_flat_cache_creation_give_the_same_buckets(
    anthropic_account: ProviderAccount, anthropic_fake
) -> None:  # type: ignore[no-untyped-def]
    run(anthropic_account, reports=["usage"])
    late = ProviderUsageBucket.objects.get(account=anthropic_account, bucket_start=at(1, 23))
    assert late.cache_write_tokens == 2 + 3  # 5m + 1h
    assert late.requests is None
    assert late.output_tokens == 2
    before = snapshot(anthropic_account)

    anthropic_fake.flat_cache_creation = True
    result = run(anthropic_account, reports=["usage"])
    # raw differs (flattened fields), so buckets with cache fields are revised, values equal
    late.refresh_from_db()
    assert late.cache_write_tokens == 5
    assert result.removed == 0
    assert len(snapshot(anthropic_account)) == len(before)


def test_anthropic_costs_from_cents_strings(anthropic_account, anthropic_fake) -> None:  # type: ignore[no-untyped-def]
    run(anthropic_account, reports=["cost"])
    costs = ProviderCostBucket.objects.filter(account=anthropic_account)
    assert sum(exact(c) for c in costs) == anthropic_fake.expected_cost()
    one_hour = costs.get(token_type="cache_creation.ephemeral_1h_input_tokens")
    assert exact(one_hour) == Decimal(3) * Decimal(6) / 1_000_000
    assert Decimal(one_hour.amount_text) == Decimal("0.0018")  # cents, as the report wrote
    assert one_hour.amount_text in one_hour.fetch.body
    assert one_hour.model == "claude-r" and one_hour.cost_type == "tokens"
    assert one_hour.line_item.startswith("claude-r Usage")


def test_reimport_of_the_same_report_changes_nothing(openai_account) -> None:  # type: ignore[no-untyped-def]
    run(openai_account)
    before = snapshot(openai_account)
    result = run(openai_account)
    assert result.changed == 0 and result.removed == 0 and result.changed_days == set()
    assert snapshot(openai_account) == before
    assert not ProviderBucketRevision.objects.exists()
    assert ProviderReportFetch.objects.filter(account=openai_account).count() == 4


def test_pagination_across_pages(openai_account, openai_fake) -> None:  # type: ignore[no-untyped-def]
    # 9 days of 1h buckets: 216 buckets, at most 168 per page
    openai_fake.events.append(ServedEvent(at(8, 20), "gpt-r", "key_c", 5, 0, 0, 1, 0))
    result = run(openai_account, until=DAY + dt.timedelta(days=9), reports=["usage"])
    assert result.pages == 2
    fetches = ProviderReportFetch.objects.filter(run_id=result.run_id).order_by("id")
    assert [f.http_status for f in fetches] == [200, 200]
    assert "page=" not in fetches[0].query and "page=" in fetches[1].query
    last = ProviderUsageBucket.objects.get(account=openai_account, api_key_id="key_c")
    assert last.fetch_id == fetches[1].id  # the bucket names the page it came from
    assert OPENAI_KEY not in fetches[0].query


def test_late_revision_keeps_the_old_values_and_bumps_the_revision(
    openai_account, openai_fake
) -> None:  # type: ignore[no-untyped-def]
    run(openai_account)
    bucket = ProviderUsageBucket.objects.get(
        account=openai_account, bucket_start=at(0, 2), api_key_id="key_b"
    )
    old_fetch, old_hash = bucket.fetch_id, bucket.content_hash
    openai_fake.add_usage(ServedEvent(at(0, 2, 30), "gpt-r", "key_b", 50, 0, 0, 20, 0))

    result = run(openai_account)
    assert result.changed_days == {DAY.date()}
    bucket.refresh_from_db()
    assert bucket.revision == 2
    assert bucket.input_uncached_tokens == 7 + 50 and bucket.output_tokens == 13 + 20
    assert bucket.requests == 2
    assert bucket.content_hash != old_hash and bucket.fetch_id != old_fetch
    revision = ProviderBucketRevision.objects.get(report="usage", bucket_id=bucket.id)
    assert revision.reason == "changed" and revision.revision == 1
    assert revision.values["input_uncached_tokens"] == 7
    assert revision.values["output_tokens"] == 13
    assert revision.fetch_id == old_fetch
    # the day's cost changed too, and keeps its history the same way
    cost_revisions = ProviderBucketRevision.objects.filter(report="cost", reason="changed")
    assert cost_revisions.count() == 2  # input and output line items of that day


def test_removed_bucket_is_zeroed_with_a_revision(openai_account, openai_fake) -> None:  # type: ignore[no-untyped-def]
    run(openai_account)
    openai_fake.hidden = lambda event: event.api_key_id == "key_b"
    result = run(openai_account, reports=["usage"])
    assert result.removed == 1 and result.changed == 0
    gone = ProviderUsageBucket.objects.get(account=openai_account, api_key_id="key_b")
    assert gone.revision == 2
    assert (gone.input_uncached_tokens, gone.output_tokens, gone.requests) == (0, 0, 0)
    assert gone.cache_write_tokens is None  # not reported stays not reported
    revision = ProviderBucketRevision.objects.get(bucket_id=gone.id, report="usage")
    assert revision.reason == "removed" and revision.values["output_tokens"] == 13
    # removed once: a further run changes nothing
    again = run(openai_account, reports=["usage"])
    assert again.removed == 0 and again.changed == 0
    # and the bucket comes back as a change when the report lists it again
    openai_fake.hidden = None
    back = run(openai_account, reports=["usage"])
    gone.refresh_from_db()
    assert back.changed == 1 and gone.revision == 3 and gone.output_tokens == 13


def test_buckets_outside_the_window_are_not_removed(openai_account, openai_fake) -> None:  # type: ignore[no-untyped-def]
    run(openai_account)
    result = run(openai_account, since=DAY + dt.timedelta(days=1), reports=["usage"])
    assert result.removed == 0
    assert ProviderUsageBucket.objects.filter(account=openai_account, bucket_start__lt=at(1, 0))


def test_429_with_retry_after_then_success(openai_account, openai_fake, waits) -> None:  # type: ignore[no-untyped-def]
    openai_fake.fail_next(1, 429, retry_after="2", report="usage")
    result = run(openai_account)
    assert waits == [2.0]  # retry-after honoured
    assert result.attempts == 3 and result.pages == 2
    statuses = list(
        ProviderReportFetch.objects.filter(run_id=result.run_id)
        .order_by("id")
        .values_list("http_status", flat=True)
    )
    assert statuses == [429, 200, 200]
    assert ProviderUsageBucket.objects.filter(account=openai_account).exists()


def test_500_then_success_backs_off_with_jitter(anthropic_account, anthropic_fake, waits) -> None:  # type: ignore[no-untyped-def]
    anthropic_fake.fail_next(2, 500, report="cost")
    result = run(anthropic_account)
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.001 and 0 <= waits[1] <= 0.002  # full jitter under the cap
    assert result.pages == 2
    anthropic_account.refresh_from_db()
    assert anthropic_account.last_error == ""


def test_500_always_on_page_2_fails_the_run_and_changes_no_bucket(
    openai_account, openai_fake, waits
) -> None:  # type: ignore[no-untyped-def]
    run(openai_account, until=DAY + dt.timedelta(days=9))
    before = snapshot(openai_account)
    openai_fake.add_usage(ServedEvent(at(0, 2, 30), "gpt-r", "key_b", 50, 0, 0, 20, 0))
    openai_fake.fail_page(2, 500, report="usage")

    with pytest.raises(ProviderImportError) as caught:
        run(openai_account, until=DAY + dt.timedelta(days=9))
    assert "failed after 3 attempts" in caught.value.message
    assert "answered 500" in caught.value.message
    assert snapshot(openai_account) == before  # page 1 had a change; nothing applied
    assert not ProviderBucketRevision.objects.exists()
    # every answer of the failed run is stored: page 1, then page 2 three times
    failed_run = ProviderReportFetch.objects.filter(account=openai_account).order_by("-id")[:4]
    assert sorted(f.http_status for f in failed_run) == [200, 500, 500, 500]
    assert len(waits) == 2
    openai_account.refresh_from_db()
    assert "answered 500" in openai_account.last_error
    assert OPENAI_KEY not in openai_account.last_error
    assert "127.0.0.1" not in openai_account.last_error


def test_401_fails_at_once_with_a_clear_message(
    openai_account, openai_fake, monkeypatch, waits
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(OPENAI_ENV, "sk-admin-wrong-key-9876")
    with pytest.raises(ProviderImportError) as caught:
        run(openai_account)
    message = caught.value.message
    assert "answered 401" in message and f"check the key in ${OPENAI_ENV}" in message
    assert "sk-admin-wrong-key-9876" not in message
    assert waits == [] and len(openai_fake.requests) == 1
    openai_account.refresh_from_db()
    assert openai_account.last_error == message
    assert openai_account.last_import_at is None


def test_missing_env_var_is_a_clear_error_without_any_request(
    openai_account, openai_fake, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(OPENAI_ENV)
    with pytest.raises(ProviderImportError, match=rf"\${OPENAI_ENV}"):
        run(openai_account)
    assert openai_fake.requests == []
    assert not ProviderReportFetch.objects.exists()
    openai_account.refresh_from_db()
    assert OPENAI_ENV in openai_account.last_error


def test_unreachable_admin_api_is_retried_then_fails(openai_account, waits) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ProviderAccount.objects.filter(pk=openai_account.pk).update(
        admin_base_url=f"http://127.0.0.1:{port}/v1"
    )
    openai_account.refresh_from_db()
    with pytest.raises(ProviderImportError) as caught:
        run(openai_account)
    assert "could not be reached" in caught.value.message
    assert str(port) not in caught.value.message
    assert len(waits) == 2 and not ProviderReportFetch.objects.exists()


def test_retry_after_longer_than_the_cap_fails_the_run(openai_account, openai_fake, waits) -> None:  # type: ignore[no-untyped-def]
    openai_fake.fail_next(1, 429, retry_after="3600")
    with pytest.raises(ProviderImportError, match="retry after 3600 s"):
        run(openai_account)
    assert waits == []


def test_a_good_run_clears_last_error(openai_account, openai_fake) -> None:  # type: ignore[no-untyped-def]
    openai_fake.fail_next(1, 400)
    with pytest.raises(ProviderImportError, match="answered 400"):
        run(openai_account)
    run(openai_account)
    openai_account.refresh_from_db()
    assert openai_account.last_error == ""


def test_the_anthropic_key_is_sent_in_its_header_only(anthropic_account, anthropic_fake) -> None:  # type: ignore[no-untyped-def]
    run(anthropic_account)
    assert all(r.headers.get("anthropic-version") == "2023-06-01" for r in anthropic_fake.requests)
    assert all(
        "x-api-key" not in r.headers for r in anthropic_fake.requests
    )  # scrubbed by the fake
    for fetch in ProviderReportFetch.objects.filter(account=anthropic_account):
        assert ANTHROPIC_KEY not in fetch.query and ANTHROPIC_KEY not in fetch.body
        assert json.loads(fetch.body)["has_more"] is False


def test_content_hash_is_order_sensitive_and_exact() -> None:
    assert content_hash([Decimal("0.10")]) != content_hash([Decimal("0.1")])
    assert content_hash([1, None]) != content_hash([None, 1])


def test_rows_sharing_a_key_are_summed_exactly(anthropic_account) -> None:  # type: ignore[no-untyped-def]
    """A report can split a bucket by a field Reckon does not key on (Anthropic's
    context_window): the parts are summed, the raw results all kept."""
    body = json.dumps(
        {
            "data": [
                {
                    "starting_at": "2026-11-02T00:00:00Z",
                    "ending_at": "2026-11-03T00:00:00Z",
                    "results": [
                        {"currency": "USD", "amount": amount, "model": "claude-r",
                         "token_type": "output_tokens", "cost_type": "tokens",
                         "context_window": window, "description": "Output", "workspace_id": None,
                         "service_tier": "standard"}
                        for amount, window in (("0.1000000000000000000001", "0-200k"), ("2", "200k-1M"))
                    ],
                }
            ],
            "has_more": False,
            "next_page": None,
        }
    )  # fmt: skip
    rows = anthropic_reports.parse("cost", body).rows
    fetch = ProviderReportFetch.objects.create(
        account=anthropic_account, report="cost", run_id="00000000-0000-0000-0000-000000000001",
        query="/", http_status=200, body=body, body_sha256="x", fetched_at=DAY,
    )  # fmt: skip
    (merged,) = importer._merge_cost([(row, fetch) for row in rows]).values()
    assert merged["amount_usd"] == Decimal("0.021000000000000000000001")
    assert merged["amount_text"] == "0.1000000000000000000001+2"
    assert amount_usd_from_text(provider="anthropic", amount_text=merged["amount_text"]) == Decimal(
        "0.021000000000000000000001"
    )
    assert [part["context_window"] for part in merged["raw"]["merged"]] == ["0-200k", "200k-1M"]
