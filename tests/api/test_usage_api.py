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
