from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from metering.services import api_key_create
from tests.billing.test_plans import write_usage
from tests.factories import TenantFactory
from tests.staff import staff_client

pytestmark = pytest.mark.django_db

CLIFF_VERSION = {
    "currency": "usd",
    "effective_from": "2026-01-01T00:00:00Z",
    "base_fee": "10",
    "components": [
        {
            "token_class": "output",
            "charge_model": "volume",
            "unit_tokens": 1000,
            "tiers": [
                {"up_to": "1000", "unit_price": "0.010", "flat_fee": "5"},
                {"up_to": "10000", "unit_price": "0.008", "flat_fee": "10"},
                {"up_to": None, "unit_price": "0.005"},
            ],
        },
        {
            "token_class": "reasoning",
            "charge_model": "per_unit",
            "aliases": ["reasoner"],
            "unit_price": "2.5",
        },
    ],
}


@pytest.fixture
def staff() -> APIClient:
    return staff_client("ops", "operator")


def tenant_client(tenant) -> tuple[APIClient, object]:  # type: ignore[no-untyped-def]
    created = api_key_create(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    return client, created.api_key


def make_plan(staff: APIClient, body: dict = CLIFF_VERSION) -> dict:  # type: ignore[type-arg]
    plan = staff.post(
        "/api/v1/plans", {"code": "reasoning", "name": "Reasoning"}, format="json"
    ).json()
    response = staff.post(f"/api/v1/plans/{plan['id']}/versions", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_operator_creates_a_plan_and_sees_the_volume_cliff_warning(staff: APIClient) -> None:
    version = make_plan(staff)
    assert version["status"] == "draft" and version["currency"] == "USD"
    assert [c["token_class"] for c in version["components"]] == ["output", "reasoning"]
    warnings = [i for i in version["issues"] if i["severity"] == "warning"]
    assert warnings and warnings[0]["code"] == "volume_cliff"
    assert "lowers the total from 90.00 to 50.00 (by 40.00)" in warnings[0]["message"]
    published = staff.post(f"/api/v1/plan-versions/{version['id']}/publish").json()
    assert published["status"] == "published" and published["published_at"]


def test_invalid_plan_is_refused_with_its_issues(staff: APIClient) -> None:
    plan = staff.post("/api/v1/plans", {"code": "bad", "name": "Bad"}, format="json").json()
    body = {
        **CLIFF_VERSION,
        "components": [{"token_class": "output", "charge_model": "graduated", "tiers": []}],
    }
    response = staff.post(f"/api/v1/plans/{plan['id']}/versions", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "plan_invalid"
    assert response.json()["error"]["detail"]["issues"][0]["code"] == "missing_tiers"


def test_tenants_cannot_use_operator_endpoints() -> None:
    client, _ = tenant_client(TenantFactory())
    assert client.get("/api/v1/plans").status_code == 403
    assert client.post("/api/v1/subscriptions", {}, format="json").status_code == 403


def test_quote_prices_any_usage_vector(staff: APIClient) -> None:
    version = make_plan(staff)
    body = {
        "plan_version": version["id"],
        "usage": [
            {"alias": "reasoner", "token_class": "output", "tokens": 12_345_000},
            {"alias": "reasoner", "token_class": "reasoning", "tokens": 2_000_000},
            {
                "alias": "other",
                "token_class": "reasoning",
                "tokens": 1_000,
            },  # no reasoning component: folds into output
        ],
    }
    quote = staff.post("/api/v1/pricing/quote", body, format="json").json()
    lines = {line["kind"] + ":" + str(line["token_class"]): line for line in quote["lines"]}
    # output volume: 12,346 units at 0.005 = 61.73; reasoning: 2M at 2.5/M = 5.00; base fee 10
    assert lines["usage:output"]["amount_exact"] == "61.73"
    assert lines["usage:output"]["reasoning_tokens"] == 1_000
    assert lines["usage:reasoning"]["amount"] == "5.00"
    assert quote["total"] == "76.73" and quote["total_minor"] == 7673
    # a tenant may not quote a draft version
    client, _ = tenant_client(TenantFactory())
    assert client.post("/api/v1/pricing/quote", body, format="json").status_code == 404


def test_upcoming_invoice_is_live_and_tenant_scoped(staff: APIClient) -> None:
    version = make_plan(staff)
    staff.post(f"/api/v1/plan-versions/{version['id']}/publish")
    acme, globex = TenantFactory(), TenantFactory()
    now = datetime.now(UTC)
    for tenant in (acme, globex):
        response = staff.post(
            "/api/v1/subscriptions",
            {
                "tenant": str(tenant.pk),
                "plan_version": version["id"],
                "starts_at": (now - timedelta(days=60)).isoformat(),
            },
            format="json",
        )
        assert response.status_code == 201, response.json()
    client, key = tenant_client(acme)
    before = client.get("/api/v1/invoices/upcoming").json()
    write_usage(key, now - timedelta(minutes=1), reasoning_tokens=4_000_000)
    after = client.get("/api/v1/invoices/upcoming").json()
    assert after["total_minor"] - before["total_minor"] == 1000  # 4M reasoning at 2.5/M, live
    assert after["tenant"] == str(acme.pk)
    other, _ = tenant_client(globex)
    assert other.get("/api/v1/invoices/upcoming").json()["total_minor"] == before["total_minor"]
