"""GET /api/v1/usage/alerts: a tenant's own alerts, newest first, never the webhook secret."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from rest_framework.test import APIClient

from billing.alerts import alerts_evaluate
from billing.models import Alert, WebhookEndpoint
from metering.models import ApiKey, SpendLimit, Tenant
from metering.services import api_key_create
from tests.factories import TenantFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db

NOV = datetime(2026, 11, 1, tzinfo=UTC)
SECRET = "whsec_never_shown_" + "s" * 24
FIELDS = {
    "event_id",
    "created_at",
    "budget",
    "description",
    "period",
    "threshold",
    "unit",
    "used",
    "limit",
    "delivery",
    "attempts",
    "delivered_at",
}


def client_for(tenant: Tenant) -> tuple[APIClient, ApiKey]:
    created = api_key_create(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    return client, created.api_key


def cross(tenant: Tenant, key: ApiKey, *, limit: str, spent: str, at: datetime) -> list[Alert]:
    SpendLimit.objects.update_or_create(
        tenant=tenant, api_key=None, window="month", defaults={"amount_usd": Decimal(limit)}
    )
    write_usage(key, at, spend_usd=Decimal(spent), output_tokens=1)  # type: ignore[arg-type]
    with time_machine.travel(at, tick=False):  # alerts are created "now"
        return alerts_evaluate(tenant_id=tenant.pk, at=at)


@pytest.fixture
def two_tenants() -> tuple[APIClient, APIClient, Tenant, Tenant]:
    acme, globex = TenantFactory(name="acme"), TenantFactory(name="globex")
    acme_client, acme_key = client_for(acme)
    globex_client, globex_key = client_for(globex)
    WebhookEndpoint.objects.create(
        tenant=acme, url="http://127.0.0.1:9/hook", secret=SECRET, is_active=False
    )
    cross(acme, acme_key, limit="100", spent="50", at=NOV + timedelta(days=2))
    cross(acme, acme_key, limit="100", spent="30", at=NOV + timedelta(days=5))
    cross(globex, globex_key, limit="10", spent="10", at=NOV + timedelta(days=3))
    return acme_client, globex_client, acme, globex


def test_a_tenant_sees_only_its_own_alerts_newest_first(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme_client, globex_client, acme, globex = two_tenants
    response = acme_client.get("/api/v1/usage/alerts")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["threshold"] for r in results] == [80, 50]  # newest first
    assert {r["event_id"] for r in results} == {
        str(e) for e in Alert.objects.filter(tenant=acme).values_list("event_id", flat=True)
    }
    first = results[0]
    assert set(first) == FIELDS
    assert first["budget"].startswith("spend_limit:") and first["period"] == "2026-11"
    assert (first["unit"], first["used"], first["limit"]) == (
        "USD",
        "80.000000000000",
        "100.000000000000",
    )
    assert first["delivery"] == "no_endpoint" and first["attempts"] == 0

    theirs = globex_client.get("/api/v1/usage/alerts").json()["results"]
    assert sorted(r["threshold"] for r in theirs) == [50, 80, 100]
    assert not {r["event_id"] for r in theirs} & {r["event_id"] for r in results}
    # a tenant key cannot widen its scope by naming another tenant
    widened = globex_client.get(f"/api/v1/usage/alerts?tenant={acme.pk}").json()["results"]
    assert {r["event_id"] for r in widened} == {r["event_id"] for r in theirs}


def test_the_webhook_secret_is_never_in_the_output(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme_client, *_ = two_tenants
    response = acme_client.get("/api/v1/usage/alerts")
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    assert SECRET.encode() not in response.content
    assert b"secret" not in response.content


def test_filters_and_cursor_pagination(two_tenants) -> None:  # type: ignore[no-untyped-def]
    acme_client, globex_client, *_ = two_tenants
    since = (NOV + timedelta(days=4)).isoformat()
    recent = acme_client.get("/api/v1/usage/alerts", {"since": since}).json()["results"]
    assert [r["threshold"] for r in recent] == [80]

    budget = recent[0]["budget"]
    assert len(acme_client.get("/api/v1/usage/alerts", {"budget": budget}).json()["results"]) == 2
    assert acme_client.get("/api/v1/usage/alerts", {"budget": "balance"}).json()["results"] == []

    page = globex_client.get("/api/v1/usage/alerts", {"limit": 2}).json()
    assert len(page["results"]) == 2 and page["next"]
    rest = globex_client.get(page["next"]).json()
    assert len(rest["results"]) == 1 and rest["next"] is None
    assert len({r["event_id"] for r in page["results"] + rest["results"]}) == 3

    bad = acme_client.get("/api/v1/usage/alerts", {"since": "not a date"})
    assert bad.status_code == 400


def test_unauthenticated_and_bad_keys_are_refused(two_tenants) -> None:  # type: ignore[no-untyped-def]
    assert APIClient().get("/api/v1/usage/alerts").status_code == 401
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Bearer rk_not_a_real_key")
    response = stranger.get("/api/v1/usage/alerts")
    assert response.status_code == 401
    assert b"threshold" not in response.content
