"""The usage page: its charts equal GET /api/v1/usage/series for the same query (numbers,
exactly), its CSV equals its tables, one tenant's usage never shows on another's page,
and a bad query is a 400 page that says what is wrong."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from metering.services import api_key_create
from metering.usage import LEDGER_COLUMNS
from tests.api.console.helpers import chart_data, key_client, member_client
from tests.factories import TenantFactory, UsageRecordFactory
from tests.staff import staff_user

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 10, 5, tzinfo=UTC)
WINDOW = {"since": "2026-10-05", "until": "2026-10-08"}  # three UTC days
CHART_IDS = ("usage-by-class", "usage-reasoning-share", "usage-by-alias", "usage-by-key")


# --- helpers (the overview's tests use them too) -----------------------------------------


class _Tables(HTMLParser):
    """Rows (cells as text) of every `<table data-table-for=...>`, by chart id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("data-table-for"):
            self._table = dict(attrs)["data-table-for"]
            self.tables[self._table] = []
        elif self._table and tag == "tr":
            self.tables[self._table].append([])
        elif self._table and tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._table and tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def html_tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def series_of(data: dict[str, Any]) -> dict[str, list[Any]]:
    return {s["key"]: s["values"] for s in data["series"]}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def acme() -> dict[str, Any]:
    """A tenant with two keys and two aliases over three days (hours apart), and another
    tenant with usage of its own in the same hours, in numbers acme never has."""
    tenant = TenantFactory(name="acme")
    first = api_key_create(tenant=tenant, name="backend")
    second = api_key_create(tenant=tenant, name="batch")
    for day, hour, key, alias, tokens in [
        (0, 1, first, "reasoner", (100, 20, 80)),
        (0, 1, second, "reasoner", (50, 10, 0)),
        (0, 5, first, "Writer", (30, 40, 0)),
        (1, 2, second, "reasoner", (200, 30, 170)),
        (2, 23, first, "writer", (10, 5, 5)),
    ]:
        UsageRecordFactory(
            tenant=tenant,
            api_key=key.api_key,
            alias=alias,
            started_at=T0 + timedelta(days=day, hours=hour, minutes=7),
            input_tokens=tokens[0],
            cached_input_tokens=3,
            cache_write_tokens=1,
            output_tokens=tokens[1],
            reasoning_tokens=tokens[2],
        )
    other = TenantFactory(name="globex")
    other_key = api_key_create(tenant=other, name="globex-key")
    UsageRecordFactory(
        tenant=other,
        api_key=other_key.api_key,
        alias="globex-secret-alias",
        started_at=T0 + timedelta(hours=1, minutes=7),
        input_tokens=987_654,
        output_tokens=123_457,
        reasoning_tokens=4_242_421,
    )
    return {
        "tenant": tenant,
        "keys": (first, second),
        "api": key_client(first.raw_key),
        "other": other,
        "other_key": other_key,
    }


def _api_rows(api: APIClient, **params: str) -> list[dict[str, Any]]:
    response = api.get("/api/v1/usage/series", params)
    assert response.status_code == 200, response.content
    return response.json()["data"]


# --- access ------------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in() -> None:
    response = Client(HTTP_HOST="127.0.0.1").get("/console/usage")
    assert response.status_code == 302
    assert response["Location"].startswith("/console/login?next=/console/usage")


def test_staff_without_membership_gets_403() -> None:
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(staff_user("ops", "finance-read"))
    response = client.get("/console/usage")
    assert response.status_code == 403
    assert b"for members of a tenant" in response.content


@pytest.mark.parametrize("role", ["owner", "developer", "billing"])
def test_every_role_sees_usage(acme: dict[str, Any], role: str) -> None:
    client = member_client(acme["tenant"], f"m-{role}", role)
    response = client.get("/console/usage")
    assert response.status_code == 200
    assert b'data-chart-id="usage-by-class"' in response.content


# --- the charts equal the API ------------------------------------------------------------


def test_daily_charts_equal_the_series_api(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "dev")
    html = client.get("/console/usage", {"granularity": "day", **WINDOW}).content.decode()
    query = {"granularity": "day", "since": "2026-10-05T00:00:00Z", "until": "2026-10-08T00:00:00Z"}
    plain = _api_rows(acme["api"], **query)

    by_class = chart_data(html, "usage-by-class")
    assert (
        by_class["labels"]
        == [r["start"] for r in plain]
        == [
            "2026-10-05T00:00:00Z",
            "2026-10-06T00:00:00Z",
            "2026-10-07T00:00:00Z",
        ]
    )
    assert [s["key"] for s in by_class["series"]] == [
        "input",
        "cache_read",
        "cache_write",
        "output",
        "reasoning",
    ]
    assert [s["style"] for s in by_class["series"]][-1] == "hidden"
    assert by_class["series"][-1]["label"] == "Reasoning (hidden)"
    for serie, column in zip(by_class["series"], LEDGER_COLUMNS, strict=True):
        assert serie["values"] == [r[column] for r in plain]
    # the values themselves, worked out by hand from the fixture
    assert series_of(by_class)["reasoning"] == [80, 170, 5]
    assert series_of(by_class)["input"] == [180, 200, 10]

    share = chart_data(html, "usage-reasoning-share")
    assert series_of(share)["reasoning_share_of_output"] == [
        r["reasoning_share_of_output"] for r in plain
    ]
    assert series_of(share)["reasoning_share_of_output"][1] == "0.850000"  # 170 / 200

    by_alias = chart_data(html, "usage-by-alias")
    alias_rows = _api_rows(acme["api"], **query, group_by="alias")
    assert [s["key"] for s in by_alias["series"]] == ["Writer", "reasoner", "writer"]
    values = series_of(by_alias)
    for row in alias_rows:
        at = by_alias["labels"].index(row["start"])
        assert values[row["alias"]][at] == row["total_tokens"]
        assert row["total_tokens"] == sum(row[c] for c in LEDGER_COLUMNS)
    assert sum(v is not None for vs in values.values() for v in vs) == len(alias_rows)
    assert values["reasoner"] == [100 + 20 + 80 + 4 + 50 + 10 + 4, 200 + 30 + 170 + 4, None]

    by_key = chart_data(html, "usage-by-key")
    key_rows = _api_rows(acme["api"], **query, group_by="api_key")
    first, second = (k.api_key for k in acme["keys"])
    assert [s["key"] for s in by_key["series"]] == [str(first.pk), str(second.pk)]
    assert by_key["series"][0]["label"] == f"{first.prefix}… backend"
    values = series_of(by_key)
    for row in key_rows:
        at = by_key["labels"].index(row["start"])
        assert values[str(row["api_key_id"])][at] == row["total_tokens"]
    assert sum(v is not None for vs in values.values() for v in vs) == len(key_rows)


def test_hourly_filtered_charts_equal_the_series_api(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "dev")
    second = acme["keys"][1].api_key
    page_query = {
        "granularity": "hour",
        "since": "2026-10-05T00:00",
        "until": "2026-10-07T00:00",
        "alias": "reasoner",
        "api_key": str(second.pk),
    }
    html = client.get("/console/usage", page_query).content.decode()
    api_query = {
        **page_query,
        "since": "2026-10-05T00:00:00Z",
        "until": "2026-10-07T00:00:00Z",
    }
    plain = _api_rows(acme["api"], **api_query)
    assert [r["start"] for r in plain] == ["2026-10-05T01:00:00Z", "2026-10-06T02:00:00Z"]
    by_class = chart_data(html, "usage-by-class")
    assert by_class["labels"] == [r["start"] for r in plain]
    assert series_of(by_class)["output"] == [10, 30]
    assert series_of(by_class)["reasoning"] == [0, 170]
    share = series_of(chart_data(html, "usage-reasoning-share"))
    assert share["reasoning_share_of_output"] == ["0.000000", "0.850000"]
    # the page names the REST query it equals
    assert (
        "/api/v1/usage/series?granularity=hour&amp;since=2026-10-05T00:00:00Z"
        "&amp;until=2026-10-07T00:00:00Z&amp;alias=reasoner" in html
    )


def test_default_window_is_the_last_30_days(acme: dict[str, Any]) -> None:
    tenant = acme["tenant"]
    key = acme["keys"][0].api_key
    now = datetime.now(UTC)
    UsageRecordFactory(tenant=tenant, api_key=key, started_at=now - timedelta(days=29))
    UsageRecordFactory(tenant=tenant, api_key=key, started_at=now - timedelta(days=31))
    html = member_client(tenant, "dev").get("/console/usage").content.decode()
    labels = chart_data(html, "usage-by-class")["labels"]
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert labels == [f"{today - timedelta(days=29):%Y-%m-%dT%H:%M:%SZ}"]
    hourly = member_client(tenant, "dev2").get("/console/usage", {"granularity": "hour"})
    assert chart_data(hourly.content.decode(), "usage-by-class")["labels"] == []
    assert b"No data in this window." in hourly.content


def test_an_until_alone_shows_the_default_span_before_it(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "dev")
    html = client.get("/console/usage", {"granularity": "hour", "until": "2026-10-06T12:00"})
    data = chart_data(html.content.decode(), "usage-by-class")
    # 48 hours: 2026-10-04T12:00 to 2026-10-06T12:00
    assert data["labels"] == [
        "2026-10-05T01:00:00Z",
        "2026-10-05T05:00:00Z",
        "2026-10-06T02:00:00Z",
    ]
    assert "since=2026-10-04T12:00:00Z&amp;until=2026-10-06T12:00:00Z" in html.content.decode()
    bad = client.get("/console/usage", {"until": "noon"})
    assert bad.status_code == 400 and "until: Datetime has wrong format" in bad.content.decode()


# --- CSV ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chart_id", CHART_IDS)
def test_csv_equals_the_table(acme: dict[str, Any], chart_id: str) -> None:
    client = member_client(acme["tenant"], "dev")
    query = {"granularity": "day", **WINDOW}
    html = client.get("/console/usage", query).content.decode()
    table = html_tables(html)[chart_id]
    response = client.get("/console/usage.csv", {**query, "chart": chart_id})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == (
        f'attachment; filename="{chart_id}-day-20261005T0000Z-20261008T0000Z.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == table
    assert len(rows) == 1 + 3  # header + three days


def test_csv_of_an_unknown_chart_is_a_400_page(acme: dict[str, Any]) -> None:
    response = member_client(acme["tenant"], "dev").get(
        "/console/usage.csv", {"chart": "usage-by-planet"}
    )
    assert response.status_code == 400
    assert b"unknown chart" in response.content


# --- one tenant ----------------------------------------------------------------------------


def test_another_tenants_usage_never_shows(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "dev")
    query = {"granularity": "hour", "since": "2026-10-05", "until": "2026-10-08"}
    html = client.get("/console/usage", query).content.decode()
    for secret in ("globex-secret-alias", "987654", "4242421", acme["other_key"].api_key.prefix):
        assert secret not in html
    for chart_id in CHART_IDS:
        csv_text = client.get("/console/usage.csv", {**query, "chart": chart_id}).content
        assert b"987654" not in csv_text and b"globex" not in csv_text
    # the other tenant's key, by id: not found, never its usage
    other_key = acme["other_key"].api_key
    assert client.get("/console/usage", {**query, "api_key": other_key.pk}).status_code == 404
    assert (
        client.get(
            "/console/usage.csv", {**query, "api_key": other_key.pk, "chart": "usage-by-class"}
        ).status_code
        == 404
    )
    # the other tenant's alias: empty
    html = client.get("/console/usage", {**query, "alias": "globex-secret-alias"}).content
    assert chart_data(html.decode(), "usage-by-class")["labels"] == []


# --- bad queries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "yesterday"}, "since: Datetime has wrong format"),
        ({"since": "2026-10-08", "until": "2026-10-05"}, "until: must be after since"),
        (
            {"granularity": "hour", "since": "2026-01-01", "until": "2026-10-01"},
            "since: spans more than 2000 hour buckets",
        ),
        ({"granularity": "month"}, "granularity: choose one of day, hour."),
        ({"api_key": "abc"}, "api_key: A valid integer is required."),
        ({"since": "1000-01-01"}, "since: Use an instant from"),
    ],
)
def test_a_bad_query_is_a_400_page_with_the_message(
    acme: dict[str, Any], query: dict[str, str], message: str
) -> None:
    client = member_client(acme["tenant"], "dev")
    for url in ("/console/usage", "/console/usage.csv"):
        response = client.get(url, {**query, "chart": "usage-by-class"})
        assert response.status_code == 400
        assert message in response.content.decode()
        assert b'class="filters"' in response.content  # the form, to put it right


# --- methods and the key filter ----------------------------------------------------------


def test_the_usage_pages_answer_only_get(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "dev")
    for url in ("/console/usage", "/console/usage.csv?chart=usage-by-class"):
        assert client.get(url).status_code == 200
        assert client.post(url).status_code == 405
        assert client.put(url).status_code == 405


def _key_options(html: str) -> list[str]:
    select = re.search(r'<select name="api_key">(.*?)</select>', html, re.S)
    assert select
    return re.findall(r'<option value="(\d+)"', select.group(1))


def test_the_key_filter_lists_a_bounded_set_of_keys(
    acme: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.console.views import usage as usage_view
    from metering.models import ApiKey
    from metering.services import api_key_revoke

    monkeypatch.setattr(usage_view, "KEY_OPTIONS_MAX", 4)
    tenant = acme["tenant"]
    first, second = (k.api_key for k in acme["keys"])
    api_key_revoke(api_key=second)  # revoked, but it has usage in the window
    spare = [api_key_create(tenant=tenant, name=f"spare {n}").api_key for n in range(4)]
    for n, key in enumerate(spare):  # spare 2 used last, then spare 0; 1 and 3 never
        if n in (0, 2):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=T0 + timedelta(hours=n))
    unused_revoked = api_key_create(tenant=tenant, name="old").api_key
    api_key_revoke(api_key=unused_revoked)
    client = member_client(tenant, "dev")

    # the keys with usage in the window, then the most recently used active keys
    html = client.get("/console/usage", WINDOW).content.decode()
    assert _key_options(html) == [str(k.pk) for k in (first, second, spare[0], spare[2])]
    assert "(revoked)" in html  # the revoked key with usage says so

    # the chosen key always, even revoked and unused; its usage only, so no other key seen
    query = {**WINDOW, "api_key": str(unused_revoked.pk)}
    html = client.get("/console/usage", query).content.decode()
    # (keys never used come newest first)
    assert _key_options(html) == [str(k.pk) for k in (*spare[0:4:2], spare[3], unused_revoked)]

    # a bad query's page: the chosen key and active keys; never another tenant's key
    other = acme["other_key"].api_key
    for chosen in (str(other.pk), "9" * 40, "abc"):
        response = client.get("/console/usage", {"since": "yesterday", "api_key": chosen})
        assert response.status_code == 400
        assert _key_options(response.content.decode()) == [str(k.pk) for k in spare]
