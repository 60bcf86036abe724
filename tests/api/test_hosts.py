"""A forged Host header never reaches a link the API builds: hosts outside ALLOWED_HOSTS
are a JSON 400 under /api/ (Django's own HTML 400 elsewhere)."""

import pytest
from rest_framework.test import APIClient

from metering.services import api_key_create
from tests.factories import TenantFactory, UsageRecordFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    tenant = TenantFactory()
    key = api_key_create(tenant=tenant)
    UsageRecordFactory.create_batch(2, tenant=tenant, api_key=key.api_key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return client


def test_default_hosts_are_loopback_in_development(settings) -> None:  # type: ignore[no-untyped-def]
    # pytest adds "testserver"; the rest is the development default
    assert set(settings.ALLOWED_HOSTS) - {"testserver"} == {"localhost", "127.0.0.1", "[::1]"}


def test_forged_host_is_a_json_400_and_builds_no_link(client: APIClient) -> None:
    response = client.get("/api/v1/usage/records?limit=1", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "bad_host"
    assert b"evil.example" not in response.content


def test_pagination_links_use_the_allowed_host(client: APIClient) -> None:
    response = client.get("/api/v1/usage/records?limit=1", HTTP_HOST="localhost")
    assert response.status_code == 200
    assert response.json()["next"].startswith("http://localhost/api/v1/usage/records?")


def test_admin_keeps_djangos_own_400(client: APIClient) -> None:
    response = client.get("/admin/login/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert not response["Content-Type"].startswith("application/json")
