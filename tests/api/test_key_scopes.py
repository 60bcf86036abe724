"""Key scopes (REVIEW #2 of issue #17): a key without the billing scope, such as one a
developer member mints in the console, reads usage but not the tenant's money through
the REST API (invoices, the upcoming invoice, the balance and its entries: 403 naming
the scope; balance alerts left out of /usage/alerts). Keys made elsewhere (CLI, admin,
the service's default) and owners' console keys keep the billing scope."""

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from billing.balances import balance_credit
from billing.models import Alert
from metering.models import ApiKey, Tenant
from metering.services import api_key_create
from tests.api.console.helpers import key_client, member_client
from tests.factories import TenantFactory
from tests.migration_helpers import leaf, migrate

pytestmark = pytest.mark.django_db

MONEY_PATHS = [
    "/api/v1/invoices",
    "/api/v1/invoices/upcoming",
    "/api/v1/invoices/export.csv",
    "/api/v1/invoices/1",
    "/api/v1/invoices/1/pdf",
    "/api/v1/balance",
    "/api/v1/balance/entries",
]


@pytest.fixture
def tenant() -> Tenant:
    tenant = TenantFactory(name="scoped")
    balance_credit(
        tenant_id=tenant.pk,
        kind="top_up",
        amount=Decimal("25.00"),
        idempotency_key="scope-top",
        effective_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    for budget in ("balance", "spend_limit:1"):
        Alert.objects.create(
            event_id=uuid.uuid4(),
            tenant=tenant,
            budget=budget,
            description=f"{budget} at 50 %",
            period="2026-11",
            threshold=50,
            unit="USD",
            used=Decimal("5"),
            limit=Decimal("10"),
        )
    return tenant


def _console_key(tenant: Tenant, username: str, role: str, **fields: str) -> tuple[str, ApiKey]:
    """A key minted in the console by a member of this role (as a browser does)."""
    client = member_client(tenant, username, role)
    form = client.get("/console/keys/new").content.decode()
    (once,) = re.findall(r'name="once" value="([^"]+)"', form)
    created = client.post("/console/keys/new", {"once": once, "name": username, **fields})
    assert created.status_code == 201, created.content
    (secret,) = re.findall(r'id="new-key-secret"[^>]*>([^<]+)<', created.content.decode())
    return secret, ApiKey.objects.get(tenant=tenant, name=username)


def _alert_budgets(client) -> list[str]:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/usage/alerts")
    assert response.status_code == 200, response.content
    return sorted(row["budget"] for row in response.json()["results"])


def test_a_developer_minted_key_reads_usage_but_not_billing(tenant: Tenant) -> None:
    secret, key = _console_key(tenant, "dev", "developer")
    assert key.can_read_billing is False
    api = key_client(secret)
    assert api.get("/api/v1/usage/summary").status_code == 200
    for path in MONEY_PATHS:
        response = api.get(path)
        assert response.status_code == 403, (path, response.content)
        assert response.json()["error"] == {
            "code": "permission_denied",
            "message": "This API key lacks the billing scope.",
            "detail": {"required_scope": "billing"},
        }, path
    assert _alert_budgets(api) == ["spend_limit:1"]
    assert api.get("/api/v1/usage/alerts?budget=balance").json()["results"] == []


def test_an_owner_minted_key_reads_billing_unless_the_owner_unticks_it(tenant: Tenant) -> None:
    secret, key = _console_key(tenant, "own", "owner", can_read_billing="on")
    assert key.can_read_billing is True
    api = key_client(secret)
    assert api.get("/api/v1/invoices").status_code == 200
    balance = api.get("/api/v1/balance")
    assert balance.status_code == 200, balance.content
    assert api.get("/api/v1/balance/entries").status_code == 200
    upcoming = api.get("/api/v1/invoices/upcoming")
    assert upcoming.status_code != 403, upcoming.content
    assert _alert_budgets(api) == ["balance", "spend_limit:1"]

    narrow, key = _console_key(tenant, "own2", "owner")  # the box left unticked
    assert key.can_read_billing is False
    assert key_client(narrow).get("/api/v1/balance").status_code == 403


def test_keys_made_outside_the_console_keep_reading_billing(tenant: Tenant) -> None:
    created = api_key_create(tenant=tenant, name="cli")
    assert created.api_key.can_read_billing is True
    api = key_client(created.raw_key)
    for path in ("/api/v1/invoices", "/api/v1/balance", "/api/v1/balance/entries"):
        assert api.get(path).status_code == 200, path
    assert _alert_budgets(api) == ["balance", "spend_limit:1"]


@pytest.mark.django_db(transaction=True)
def test_migration_0027_keeps_existing_keys_reading_billing() -> None:
    before = [("metering", "0026_tenant_member_roles")]
    try:
        old_apps = migrate(before).loader.project_state(before).apps
        old_tenant = old_apps.get_model("metering", "Tenant").objects.create(name="old")
        old_key = old_apps.get_model("metering", "ApiKey").objects.create(
            tenant=old_tenant, name="old", prefix="rk_old", key_hash="0" * 64
        )
        migrate([("metering", "0027_apikey_can_read_billing")])
        assert ApiKey.objects.get(pk=old_key.pk).can_read_billing is True
        # the database default, not only Django's: a row written without the column
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO metering_apikey (tenant_id, name, prefix, key_hash, created_at) "
                "VALUES (%s, 'raw', 'rk_raw', %s, now())",
                [old_tenant.pk, "1" * 64],
            )
        assert ApiKey.objects.get(name="raw").can_read_billing is True
        migrate(before)  # and back
    finally:
        migrate(leaf())
