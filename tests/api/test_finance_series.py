"""GET /api/v1/finance/margins/series: the margin report over time, for MARGINS_VIEW."""

import pytest
from rest_framework.test import APIClient

from billing.reports import margin_series
from metering.services import api_key_create
from tests.billing.routed_world import NOV, T0
from tests.billing.test_margin_series import spread_world
from tests.factories import ApiKeyFactory
from tests.staff import staff_client

pytestmark = pytest.mark.django_db
URL = "/api/v1/finance/margins/series"


def test_finance_reads_the_series_as_exact_decimal_text() -> None:
    world = spread_world()
    body = staff_client("cfo", "finance-read").get(
        URL, {"since": "2026-10-01", "until": "2026-11-01", "group_by": "target"}
    )
    assert body.status_code == 200
    data = body.json()
    assert (data["since"], data["until"]) == (T0.isoformat(), NOV.isoformat())
    assert (data["granularity"], data["group_by"]) == ("day", "target")
    assert len(data["buckets"]) == len(data["totals"]) == 31
    series = margin_series(since=T0, until=NOV, group_by="target")
    day12 = next(
        r
        for r in data["rows"]
        if r["group"] == "reasoner/mi" and r["start"].startswith("2026-10-12")
    )
    assert day12 == {
        "group": "reasoner/mi",
        "start": "2026-10-12T00:00:00+00:00",
        "revenue_usd": "4.938268",
        "cost_usd": "0.6172835",
        "gross_margin_usd": "4.3209845",
        "gross_margin": "0.875",
        "reasoning_cost_usd": "0",
        "other_cost_usd": "0.6172835",
        "reasoning_share_of_cost": "0",
    }
    assert len(data["rows"]) == len(series.rows)
    fees = [r for r in data["rows"] if r["group"] == "(fees)"]
    assert len(fees) == 31 and fees[0]["cost_usd"] == "0" and fees[0]["gross_margin"] == "1"
    assert {g["key"] for g in data["groups"]} == {r["group"] for r in data["rows"]}
    by_tenant = staff_client("cfo2", "finance-read").get(
        URL, {"since": "2026-10-01", "until": "2026-11-01", "group_by": "tenant"}
    )
    labels = {g["key"]: g["label"] for g in by_tenant.json()["groups"]}
    assert labels[str(world.key.tenant_id)] == world.key.tenant.name


def test_the_default_window_is_the_last_60_days_by_accelerator() -> None:
    data = staff_client("cfo", "finance-read").get(URL).json()
    assert (data["granularity"], data["group_by"]) == ("day", "accelerator")
    assert len(data["buckets"]) == 60 and data["buckets"][-1] < data["until"]


def test_who_may_read_it() -> None:
    assert staff_client("ops", "operator").get(URL).status_code == 403  # no MARGINS_VIEW
    tenant = APIClient()
    tenant.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=ApiKeyFactory().tenant).raw_key}"
    )
    assert tenant.get(URL).status_code == 403
    assert APIClient().get(URL).status_code in (401, 403)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"granularity": "hour"}, "granularity"),
        ({"group_by": "planet"}, "group_by"),
        ({"group_by": "tenant,alias"}, "group_by"),
        ({"since": "2026-11-01", "until": "2026-10-01"}, "until"),
        ({"since": "2026-10-01", "until": "2026-10-01"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-01-01", "until": "2026-10-01"}, "since"),  # > 400 days by day
        ({"since": "1969-12-01", "until": "1970-01-02", "granularity": "month"}, "until"),
    ],
)
def test_a_bad_query_is_a_json_400(query: dict[str, str], field: str) -> None:
    answer = staff_client("cfo", "finance-read").get(URL, query)
    assert answer.status_code == 400
    assert answer["Content-Type"].startswith("application/json")
    assert field in str(answer.json())


def test_months_are_accepted_over_a_long_window() -> None:
    spread_world()
    data = (
        staff_client("cfo", "finance-read")
        .get(URL, {"since": "2025-11-01", "until": "2026-12-01", "granularity": "month"})
        .json()
    )
    assert len(data["buckets"]) == 13
    october = data["totals"][11]
    assert october["start"] == T0.isoformat() and october["revenue_usd"] != "0"
