"""The importer against hostile or broken admin API answers, served verbatim by a scripted
server on loopback: values the columns cannot hold, NUL characters, oversized pages, a
`next_page` that repeats. Each fails the run cleanly: `last_error` set, no bucket changed,
never a database error (review S15 and the next_page guard). Plus the exactness and
ordering rules of report values (review NITs)."""

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from metering.models import (
    ProviderAccount,
    ProviderCostBucket,
    ProviderReportFetch,
    ProviderUsageBucket,
)
from metering.providers import importer
from metering.providers.accounts import provider_account_set
from metering.providers.importer import ProviderImportError, provider_reports_import
from metering.providers.reports import BIGINT_MAX, ReportFormatError, load, usd

pytestmark = pytest.mark.django_db

KEY = "sk-admin-hardening-secret-0123456789"
ENV = "RECKON_TEST_HARDENING_ADMIN_KEY"
START = 1793577600  # 2026-11-02T00:00:00Z
SINCE = dt.datetime.fromtimestamp(START, dt.UTC)
UNTIL = SINCE + dt.timedelta(days=1)


class Scripted:
    """Answers each GET with the next body of `pages` (the last one repeats), 200."""

    def __init__(self) -> None:
        self.pages: list[str | bytes] = []
        self.requests: list[str] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                scripted.requests.append(self.path)
                index = min(len(scripted.requests), len(scripted.pages)) - 1
                body = scripted.pages[index]
                data = body.encode() if isinstance(body, str) else body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


@pytest.fixture
def account(scripted: Scripted, monkeypatch) -> ProviderAccount:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(ENV, KEY)
    return provider_account_set(
        name="hostile", provider="openai", admin_key_env=ENV, admin_base_url=scripted.url
    )


def usage_page(
    results: list[dict[str, Any]], *, has_more: bool = False, next_page: str | None = None
) -> str:
    return json.dumps(
        {
            "object": "page",
            "data": [{"start_time": START, "end_time": START + 3600, "results": results}],
            "has_more": has_more,
            "next_page": next_page,
        }
    )


def usage(**overrides: Any) -> dict[str, Any]:
    return {
        "model": "gpt-r",
        "api_key_id": "key_a",
        "project_id": "proj",
        "service_tier": "default",
        "input_tokens": 10,
        "input_cached_tokens": 2,
        "output_tokens": 5,
        "num_model_requests": 1,
        **overrides,
    }


def cost_page(value: str) -> str:
    """A cost page whose amount is the JSON number `value`, written verbatim."""
    results = '[{"line_item": "gpt-r, input", "project_id": "proj", "amount": {"value": VALUE, "currency": "usd"}}]'
    bucket = f'{{"start_time": {START}, "end_time": {START + 86400}, "results": {results}}}'
    page = f'{{"object": "page", "data": [{bucket}], "has_more": false, "next_page": null}}'
    return page.replace("VALUE", value)


def fails_cleanly(account: ProviderAccount, match: str, reports: tuple[str, ...]) -> None:
    with pytest.raises(ProviderImportError, match=match):
        provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=reports)
    account.refresh_from_db()
    assert re.search(match, account.last_error)
    assert KEY not in account.last_error
    assert not ProviderUsageBucket.objects.filter(account=account).exists()
    assert not ProviderCostBucket.objects.filter(account=account).exists()


def test_a_good_scripted_page_imports(account, scripted) -> None:  # type: ignore[no-untyped-def]
    """The control for the failures below: the same page with storable values imports."""
    scripted.pages = [usage_page([usage()])]
    result = provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=["usage"])
    assert result.created == 1
    bucket = ProviderUsageBucket.objects.get(account=account)
    assert (bucket.input_uncached_tokens, bucket.cache_read_tokens, bucket.output_tokens) == (
        8,
        2,
        5,
    )


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (usage(model="m" * 201), "`model` is longer than 200 characters"),
        (usage(api_key_id="k" * 201), "`api_key_id` is longer than 200 characters"),
        (usage(service_tier="t" * 51), "`service_tier` is longer than 50 characters"),
        (usage(project_id="p" * 201), "`workspace` is longer than 200 characters"),
        (usage(output_tokens=BIGINT_MAX + 1), "`output_tokens` is larger than Reckon stores"),
    ],
)
def test_a_value_its_column_cannot_hold_fails_the_run_cleanly(
    account, scripted, result: dict[str, Any], problem: str
) -> None:  # type: ignore[no-untyped-def]
    scripted.pages = [usage_page([usage(), result])]
    fails_cleanly(account, problem, ("usage",))


def test_counts_that_overflow_only_once_merged_are_refused(account, scripted) -> None:  # type: ignore[no-untyped-def]
    """Two rows of one key, each storable, whose sum is not (rows sharing a key are summed)."""
    half = BIGINT_MAX // 2 + 1
    scripted.pages = [
        usage_page([usage(output_tokens=half, extra="a"), usage(output_tokens=half, extra="b")])
    ]
    fails_cleanly(account, "`output_tokens` is out of range", ("usage",))


def test_an_amount_with_too_many_integer_digits_is_refused(account, scripted) -> None:  # type: ignore[no-untyped-def]
    scripted.pages = [cost_page("123456789012345678901.5")]
    fails_cleanly(account, "more than 20 digits before the decimal point", ("cost",))


def test_an_amount_at_the_limit_is_stored_exactly(account, scripted) -> None:  # type: ignore[no-untyped-def]
    scripted.pages = [cost_page("12345678901234567890.000000000000000000000001")]
    provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=["cost"])
    bucket = ProviderCostBucket.objects.get(account=account)
    assert bucket.amount_text == "12345678901234567890.000000000000000000000001"


def test_an_escaped_nul_in_a_value_is_refused(account, scripted) -> None:  # type: ignore[no-untyped-def]
    scripted.pages = [usage_page([usage(model="gpt\\u0000r")]).replace("\\\\u0000", "\\u0000")]
    assert "\\u0000" in scripted.pages[0]
    fails_cleanly(account, "holds a NUL character", ("usage",))


def test_a_raw_nul_byte_in_the_body_is_stored_and_fails_the_parse(account, scripted) -> None:  # type: ignore[no-untyped-def]
    body = usage_page([usage()]).encode().replace(b'"gpt-r"', b'"gpt\x00r"')
    scripted.pages = [body]
    fails_cleanly(account, "cannot read", ("usage",))
    fetch = ProviderReportFetch.objects.get(account=account)
    assert "\x00" not in fetch.body and "gpt\ufffdr" in fetch.body


def test_a_page_larger_than_the_cap_is_refused_and_not_retried(account, scripted, settings) -> None:  # type: ignore[no-untyped-def]
    page = usage_page([usage()])
    settings.RECKON_PROVIDER_MAX_PAGE_BYTES = len(page.encode()) - 1
    scripted.pages = [page]
    fails_cleanly(account, "larger than RECKON_PROVIDER_MAX_PAGE_BYTES", ("usage",))
    assert len(scripted.requests) == 1
    settings.RECKON_PROVIDER_MAX_PAGE_BYTES = len(page.encode())
    provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=["usage"])
    assert ProviderUsageBucket.objects.filter(account=account).count() == 1


def test_a_repeated_next_page_stops_the_run(account, scripted) -> None:  # type: ignore[no-untyped-def]
    """Pages that keep answering the same `next_page` token: the run stops at the repeat
    (the third request), it does not loop to MAX_PAGES."""
    scripted.pages = [usage_page([usage()], has_more=True, next_page="again")]
    fails_cleanly(account, "returned the same next_page twice", ("usage",))
    assert len(scripted.requests) == 2
    assert "page=again" in scripted.requests[1]


def test_max_pages_bounds_a_run_of_distinct_tokens(account, scripted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(importer, "MAX_PAGES", 3)
    scripted.pages = [usage_page([usage()], has_more=True, next_page=f"p{n}") for n in range(1, 10)]
    fails_cleanly(account, "more than 3 pages", ("usage",))
    assert len(scripted.requests) == 3


def test_rows_sharing_a_key_in_another_order_change_nothing(account, scripted) -> None:  # type: ignore[no-untyped-def]
    first, second = usage(extra="a", output_tokens=1), usage(extra="b", output_tokens=2)
    scripted.pages = [usage_page([first, second])]
    provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=["usage"])
    before = ProviderUsageBucket.objects.get(account=account)
    scripted.pages = [usage_page([second, first])]
    scripted.requests.clear()
    result = provider_reports_import(account=account, since=SINCE, until=UNTIL, reports=["usage"])
    after = ProviderUsageBucket.objects.get(account=account)
    assert result.changed == 0
    assert (after.revision, after.content_hash) == (1, before.content_hash)
    assert after.output_tokens == 3


# ---- report values: exactness -------------------------------------------------------------------


def test_usd_never_rounds_an_amount_of_more_than_28_digits() -> None:
    with pytest.raises(ReportFormatError, match="more than 24 decimal places"):
        usd(Decimal("1234.000000000000000000000000001"), "amount")
    assert usd(Decimal("1234.000000000000000000000000000"), "amount") == Decimal("1234")
    long = Decimal("12345678901234567890.123456789012345678901234000")
    assert usd(long, "amount") == Decimal("12345678901234567890.123456789012345678901234")


def test_load_refuses_nul_in_keys_too() -> None:
    with pytest.raises(ReportFormatError, match="NUL"):
        load('{"data": [], "a\\u0000": 1}')
