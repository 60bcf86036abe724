from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from metering.services import api_key_create, api_key_revoke
from tests.factories import ApiKeyFactory, TenantFactory, UsageRecordFactory
from tests.staff import staff_client

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def client_for(tenant) -> tuple[APIClient, object]:  # type: ignore[no-untyped-def]
    created = api_key_create(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    return client, created.api_key


@pytest.fixture
def two_tenants():  # type: ignore[no-untyped-def]
    acme, globex = TenantFactory(name="acme"), TenantFactory(name="globex")
    acme_client, acme_key = client_for(acme)
    for hour in range(3):
        UsageRecordFactory(
            tenant=acme, api_key=acme_key, alias="reasoner", started_at=T0 + timedelta(hours=hour)
        )
    UsageRecordFactory(
        tenant=acme,
        api_key=acme_key,
        alias="thinker",
        started_at=T0 + timedelta(days=1),
        reasoning_tokens=0,
        output_tokens=7,
    )
    UsageRecordFactory.create_batch(5, tenant=globex, api_key=ApiKeyFactory(tenant=globex))
    return acme, globex, acme_client


def test_records_are_tenant_scoped(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme, globex, client = two_tenants
    response = client.get("/api/v1/usage/records")
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 4
    # a tenant key cannot widen its scope by asking for another tenant
    response = client.get(f"/api/v1/usage/records?tenant={globex.pk}")
    assert len(response.json()["results"]) == 4


def test_records_filter_and_cursor_paginate(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    response = client.get("/api/v1/usage/records", {"alias": "reasoner", "limit": 2})
    body = response.json()
    assert len(body["results"]) == 2 and body["next"]
    second = client.get(body["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None
    seen = {r["request_id"] for r in body["results"] + second["results"]}
    assert len(seen) == 3
    window = client.get(
        "/api/v1/usage/records",
        {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()},
    )
    assert len(window.json()["results"]) == 1


def test_summary_totals_and_reasoning_share(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    data = client.get("/api/v1/usage/summary").json()["data"]
    assert data == [
        {
            "requests": 4,
            "input_tokens": 400,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 67,
            "reasoning_tokens": 240,
            "total_tokens": 707,
            "reasoning_share_of_output": "0.781759",
        }
    ]


def test_summary_group_by_alias_and_day(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    by_alias = client.get("/api/v1/usage/summary", {"group_by": "alias"}).json()["data"]
    assert [(r["alias"], r["requests"], r["reasoning_tokens"]) for r in by_alias] == [
        ("reasoner", 3, 240),
        ("thinker", 1, 0),
    ]
    by_day = client.get("/api/v1/usage/summary", {"group_by": "day"}).json()["data"]
    assert [(r["day"], r["requests"]) for r in by_day] == [("2026-11-01", 3), ("2026-11-02", 1)]
    by_key = client.get("/api/v1/usage/summary", {"group_by": "api_key"}).json()["data"]
    assert len(by_key) == 1 and by_key[0]["api_key_prefix"].startswith("rk_")


def test_bad_query_gets_a_stable_error(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    response = client.get("/api/v1/usage/summary", {"group_by": "planet"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "group_by" in response.json()["error"]["detail"]


def test_revoked_or_missing_key_is_refused(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme, _, client = two_tenants
    assert APIClient().get("/api/v1/usage/records").status_code == 401
    api_key_revoke(api_key=acme.api_keys.get())
    response = client.get("/api/v1/usage/records")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_staff_reads_a_named_tenant(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, globex, _ = two_tenants
    staff = staff_client("fin", "finance-read")
    assert staff.get("/api/v1/usage/records").status_code == 400
    assert (
        len(staff.get("/api/v1/usage/records", {"tenant": str(globex.pk)}).json()["results"]) == 5
    )


def test_series_buckets_in_utc_per_granularity_and_group(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    since = (T0 - timedelta(minutes=30)).isoformat()
    until = (T0 + timedelta(days=1, minutes=30)).isoformat()
    hourly = client.get(
        "/api/v1/usage/series", {"granularity": "hour", "since": since, "until": until}
    ).json()
    assert hourly["granularity"] == "hour" and hourly["group_by"] is None
    assert [(r["start"], r["requests"]) for r in hourly["data"]] == [
        ("2026-11-01T00:00:00Z", 1),
        ("2026-11-01T01:00:00Z", 1),
        ("2026-11-01T02:00:00Z", 1),
        ("2026-11-02T00:00:00Z", 1),
    ]
    assert hourly["data"][0]["reasoning_share_of_output"] == "0.800000"
    daily = client.get(
        "/api/v1/usage/series",
        {"granularity": "day", "since": since, "until": until, "group_by": "alias"},
    ).json()["data"]
    assert [(r["start"], r["alias"], r["requests"], r["total_tokens"]) for r in daily] == [
        ("2026-11-01T00:00:00Z", "reasoner", 3, 600),
        ("2026-11-02T00:00:00Z", "thinker", 1, 107),
    ]
    monthly = client.get(
        "/api/v1/usage/series", {"granularity": "month", "since": "2026-10-15T00:00:00Z"}
    ).json()["data"]
    assert [(r["start"], r["requests"]) for r in monthly] == [("2026-11-01T00:00:00Z", 4)]
    by_key = client.get(
        "/api/v1/usage/series",
        {"granularity": "month", "since": since, "group_by": "api_key"},
    ).json()["data"]
    assert len(by_key) == 1 and by_key[0]["api_key_id"] and by_key[0]["requests"] == 4


def test_series_bad_parameters_get_a_stable_error(two_tenants) -> None:  # type: ignore[no-untyped-def]
    _, _, client = two_tenants
    response = client.get("/api/v1/usage/series", {"granularity": "week", "since": "2026-11-01"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "granularity" in response.json()["error"]["detail"]
    response = client.get(
        "/api/v1/usage/series",
        {"granularity": "hour", "since": "2026-01-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"},
    )
    assert response.status_code == 400 and "2000 hour buckets" in str(response.json())


def test_summary_counts_flagged_records_like_a_raw_scan(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme, _, client = two_tenants
    UsageRecordFactory(
        tenant=acme,
        api_key=acme.api_keys.get(),
        started_at=T0 + timedelta(hours=5),
        flags=["reasoning_exceeds_output"],
        input_tokens=9,
    )
    data = client.get(
        "/api/v1/usage/summary",
        {"since": T0.isoformat(), "until": (T0 + timedelta(days=3)).isoformat()},
    ).json()["data"]
    assert (data[0]["requests"], data[0]["input_tokens"]) == (5, 409)


def test_groups_are_listed_in_code_point_order_whatever_the_collation() -> None:
    """Decision 0113: aliases sort by code point (as Python sorts strings), not by the
    database's collation, so rollups, raw edge hours and every backend list them alike."""
    tenant = TenantFactory()
    client, key = client_for(tenant)
    for n, alias in enumerate(["reasoner", "b-2", "Ärger", "Thinker"]):
        for at in (T0 + timedelta(minutes=10 + n), T0 + timedelta(hours=2, minutes=n)):
            UsageRecordFactory(tenant=tenant, api_key=key, alias=alias, started_at=at)
    code_points = ["Thinker", "b-2", "reasoner", "Ärger"]
    mid_hour = {
        "since": (T0 + timedelta(minutes=5)).isoformat(),
        "until": (T0 + timedelta(hours=3)).isoformat(),
    }
    for window in ({}, mid_hour):  # rollups only; rollups plus raw edge records
        summary = client.get("/api/v1/usage/summary", {"group_by": "alias", **window}).json()
        assert [r["alias"] for r in summary["data"]] == code_points
        assert [r["requests"] for r in summary["data"]] == [2, 2, 2, 2]
    series = client.get(
        "/api/v1/usage/series", {"granularity": "day", "group_by": "alias", **mid_hour}
    ).json()["data"]
    assert [(r["start"], r["alias"]) for r in series] == [
        ("2026-11-01T00:00:00Z", alias) for alias in code_points
    ]
