"""Prepaid balances over REST: a tenant reads its own position and ledger; operators add
credits (idempotently) and set whether the balance stops calls."""

import uuid
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from billing.balances import balance_credit
from billing.invoicing.close import period_close
from billing.models import BalanceAccount, BalanceEntry
from billing.plans import subscription_create
from metering.models import Tenant
from metering.services import api_key_create
from tests.factories import ApiKeyFactory, TenantFactory
from tests.scenarios.test_invoicing_stories import SEP, at, use, version
from tests.staff import staff_client

pytestmark = pytest.mark.django_db

CREDIT_FIELDS = {"id", "kind", "amount", "remaining", "effective_at", "expires_at"}


@pytest.fixture
def staff() -> APIClient:
    return staff_client("ops", "finance-write")


def tenant_client(tenant: Tenant) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=tenant).raw_key}")
    return client


@pytest.fixture
def acme():  # type: ignore[no-untyped-def]
    """A prepaid tenant on $10 a month plus $4 per 1M output tokens: a 5.00 top-up and a
    20.00 grant expiring mid-October; September's 14.00 invoice was paid from the grant,
    and October has 2.00 of usage so far."""
    key = ApiKeyFactory(tenant__name="acme")
    standard = version("standard", base="10", output="4.00")
    subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
    top_up, _ = balance_credit(
        tenant_id=key.tenant_id,
        kind="top_up",
        amount=Decimal("5.00"),
        idempotency_key="acme-top",
        effective_at=SEP,
    )
    grant, _ = balance_credit(
        tenant_id=key.tenant_id,
        kind="grant",
        amount=Decimal("20.00"),
        idempotency_key="acme-promo",
        effective_at=SEP,
        expires_at=at(2026, 10, 15),
        description="Launch promotion",
    )
    use(key, at(2026, 9, 3), output_tokens=1_000_000, spend_usd=Decimal("4"))
    september = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    use(key, at(2026, 10, 2), output_tokens=500_000, spend_usd=Decimal("2"))
    return key.tenant, top_up, grant, september


def test_a_tenant_reads_its_exact_balance_credits_in_drawing_order(acme) -> None:  # type: ignore[no-untyped-def]
    tenant, top_up, grant, _ = acme
    with time_machine.travel(at(2026, 10, 10), tick=False):
        response = tenant_client(tenant).get("/api/v1/balance")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert {k: body[k] for k in body if k != "credits"} == {
        "currency": "USD",
        "hard_stop": True,
        "available": "11.000000000000",  # 6.00 left of the grant + the 5.00 top-up
        "uninvoiced_spend": "2.000000000000",  # October so far, at list price
        "remaining": "9.000000000000",
        "watermark": "2026-10-01T00:00:00Z",
    }
    assert body["credits"] == [  # the expiring grant is drawn first
        {
            "id": grant.pk,
            "kind": "grant",
            "amount": "20.000000000000",
            "remaining": "6.000000000000",
            "effective_at": "2026-09-01T00:00:00Z",
            "expires_at": "2026-10-15T00:00:00Z",
        },
        {
            "id": top_up.pk,
            "kind": "top_up",
            "amount": "5.000000000000",
            "remaining": "5.000000000000",
            "effective_at": "2026-09-01T00:00:00Z",
            "expires_at": None,
        },
    ]
    # after the grant expired only the top-up is available
    with time_machine.travel(at(2026, 10, 20), tick=False):
        later = tenant_client(tenant).get("/api/v1/balance").json()
    assert (later["available"], later["remaining"]) == ("5.000000000000", "3.000000000000")


def test_a_tenant_reads_its_ledger_newest_first_with_invoice_numbers(acme) -> None:  # type: ignore[no-untyped-def]
    tenant, top_up, grant, september = acme
    client = tenant_client(tenant)
    page = client.get("/api/v1/balance/entries", {"limit": 2}).json()
    consumption, promo = page["results"]
    assert consumption == {
        "id": consumption["id"],
        "kind": "consumption",
        "amount": "-14.000000000000",
        "effective_at": consumption["effective_at"],
        "expires_at": None,
        "credit": grant.pk,
        "invoice_number": september.number,
        "description": f"Invoice {september.number}",
        "created_at": consumption["created_at"],
    }
    assert (promo["id"], promo["kind"], promo["amount"]) == (grant.pk, "grant", "20.000000000000")
    assert promo["invoice_number"] is None and promo["description"] == "Launch promotion"
    assert "idempotency_key" not in promo  # operator-chosen keys stay with operators
    rest = client.get(page["next"]).json()
    assert [e["id"] for e in rest["results"]] == [top_up.pk] and rest["next"] is None


def test_another_tenant_never_sees_the_balance(acme) -> None:  # type: ignore[no-untyped-def]
    tenant, *_ = acme
    globex = TenantFactory(name="globex")
    balance_credit(
        tenant_id=globex.pk, kind="top_up", amount=Decimal("1.00"), idempotency_key="globex-1"
    )
    theirs = tenant_client(globex)
    body = theirs.get("/api/v1/balance", {"tenant": str(tenant.pk)}).json()
    assert body["available"] == "1.000000000000" and len(body["credits"]) == 1
    entries = theirs.get("/api/v1/balance/entries", {"tenant": str(tenant.pk)}).json()
    assert [e["amount"] for e in entries["results"]] == ["1.000000000000"]

    nobody = tenant_client(TenantFactory(name="initech"))  # no balance at all
    for path in ("/api/v1/balance", "/api/v1/balance/entries"):
        response = nobody.get(path)
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "code": "not_found",
                "message": "This tenant has no prepaid balance.",
                "detail": None,
            }
        }
        assert APIClient().get(path).status_code == 401
        stranger = APIClient()
        stranger.credentials(HTTP_AUTHORIZATION="Bearer rk_not_a_real_key")
        assert stranger.get(path).status_code == 401


def test_staff_read_any_tenants_balance(acme, staff: APIClient) -> None:  # type: ignore[no-untyped-def]
    tenant, *_ = acme
    assert staff.get("/api/v1/balance").status_code == 400  # staff name the tenant
    with time_machine.travel(at(2026, 10, 10), tick=False):
        mine = staff.get("/api/v1/balance", {"tenant": str(tenant.pk)}).json()
        same = staff.get(f"/api/v1/tenants/{tenant.pk}/balance").json()
    assert mine == same and mine["available"] == "11.000000000000"
    credits = staff.get(f"/api/v1/tenants/{tenant.pk}/credits").json()
    assert [(c["kind"], c["remaining"]) for c in credits] == [
        ("grant", "6.000000000000"),
        ("top_up", "5.000000000000"),
    ]


def credit_body(**overrides: object) -> dict[str, object]:
    return {"kind": "top_up", "amount": "12.50", "idempotency_key": "order-1001", **overrides}


def test_operator_adds_a_credit_idempotently(staff: APIClient) -> None:
    tenant = TenantFactory()
    url = f"/api/v1/tenants/{tenant.pk}/credits"
    assert not BalanceAccount.objects.filter(tenant=tenant).exists()
    created = staff.post(url, credit_body(description="Order 1001"), format="json")
    assert created.status_code == 201, created.json()
    credit = created.json()
    assert set(credit) == CREDIT_FIELDS
    assert (credit["kind"], credit["amount"], credit["remaining"]) == (
        "top_up",
        "12.500000000000",
        "12.500000000000",
    )
    entry = BalanceEntry.objects.get(pk=credit["id"])
    assert entry.amount == Decimal("12.50") and entry.description == "Order 1001"
    assert entry.account.tenant_id == tenant.pk and entry.account.currency == "USD"

    replay = staff.post(url, credit_body(description="Order 1001"), format="json")
    assert replay.status_code == 200 and replay.json() == credit
    as_integer = staff.post(
        url, credit_body(amount=30, idempotency_key="order-1002"), format="json"
    )
    assert as_integer.status_code == 201 and as_integer.json()["amount"] == "30.000000000000"
    assert BalanceEntry.objects.filter(account__tenant=tenant).count() == 2

    conflict = staff.post(url, credit_body(amount="13.00"), format="json")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"
    assert BalanceEntry.objects.filter(account__tenant=tenant).count() == 2

    grant = staff.post(
        url,
        credit_body(
            kind="grant",
            amount="5",
            idempotency_key="promo-7",
            effective_at="2026-11-01T00:00:00Z",
            expires_at="2026-12-01T00:00:00+01:00",
        ),
        format="json",
    )
    assert grant.status_code == 201, grant.json()
    assert grant.json()["expires_at"] == "2026-11-30T23:00:00Z"
    listed = staff.get(url).json()
    # drawing order: the expiring grant, then the others oldest first
    assert [c["id"] for c in listed] == [grant.json()["id"], credit["id"], as_integer.json()["id"]]


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"amount": 12.5}, "invalid_request", "amount"),  # a JSON float
        ({"amount": 12.0}, "invalid_request", "amount"),
        ({"amount": True}, "invalid_request", "amount"),
        ({"amount": "twelve"}, "invalid_request", "amount"),
        ({"amount": "NaN"}, "invalid_request", "amount"),
        ({"amount": "-5.00"}, "balance_invalid", None),
        ({"amount": "0"}, "balance_invalid", None),
        ({"amount": "1.005"}, "balance_invalid", None),  # finer than a cent
        ({"expires_at": "2027-01-01T00:00:00Z"}, "balance_invalid", None),  # top-ups never expire
        (
            {
                "kind": "grant",
                "effective_at": "2026-12-01T00:00Z",
                "expires_at": "2026-11-01T00:00Z",
            },
            "balance_invalid",
            None,
        ),
        ({"kind": "consumption"}, "invalid_request", "kind"),
        ({"currency": "XXX"}, "invalid_request", "currency"),
        ({"idempotency_key": ""}, "invalid_request", "idempotency_key"),
    ],
)
def test_invalid_credits_are_refused(staff: APIClient, overrides, code, field) -> None:  # type: ignore[no-untyped-def]
    tenant = TenantFactory()
    response = staff.post(
        f"/api/v1/tenants/{tenant.pk}/credits", credit_body(**overrides), format="json"
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    if field:
        assert field in error["detail"]
    assert not BalanceEntry.objects.exists()


def test_a_missing_idempotency_key_is_refused(staff: APIClient) -> None:
    tenant = TenantFactory()
    body = credit_body()
    del body["idempotency_key"]
    response = staff.post(f"/api/v1/tenants/{tenant.pk}/credits", body, format="json")
    assert response.status_code == 400
    assert "idempotency_key" in response.json()["error"]["detail"]


def test_operator_endpoints_are_staff_only_and_need_a_known_tenant(staff: APIClient) -> None:
    tenant = TenantFactory()
    client = tenant_client(tenant)
    credits, balance = (
        f"/api/v1/tenants/{tenant.pk}/credits",
        f"/api/v1/tenants/{tenant.pk}/balance",
    )
    assert client.post(credits, credit_body(), format="json").status_code == 403
    assert client.get(credits).status_code == 403
    assert client.patch(balance, {"hard_stop": False}, format="json").status_code == 403
    assert APIClient().post(credits, credit_body(), format="json").status_code == 401
    member = APIClient()
    member.force_authenticate(get_user_model().objects.create_user("analyst", is_staff=False))
    assert member.post(credits, credit_body(), format="json").status_code == 403
    assert not BalanceEntry.objects.exists()

    unknown = uuid.uuid4()
    for response in (
        staff.post(f"/api/v1/tenants/{unknown}/credits", credit_body(), format="json"),
        staff.get(f"/api/v1/tenants/{unknown}/credits"),
        staff.patch(f"/api/v1/tenants/{unknown}/balance", {"hard_stop": False}, format="json"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == {
            "code": "not_found",
            "message": "No such tenant.",
            "detail": None,
        }
    assert staff.get(credits).json() == []  # a known tenant without a balance
    assert staff.get(balance).status_code == 404


def test_operator_sets_the_hard_stop_opening_the_balance_if_needed(staff: APIClient) -> None:
    tenant = TenantFactory()
    url = f"/api/v1/tenants/{tenant.pk}/balance"
    opened = staff.patch(url, {"hard_stop": False, "currency": "eur"}, format="json")
    assert opened.status_code == 200, opened.json()
    assert opened.json() == {
        "currency": "EUR",
        "hard_stop": False,
        "available": "0.000000000000",
        "uninvoiced_spend": "0.000000000000",
        "remaining": "0.000000000000",
        "watermark": None,
        "credits": [],
    }
    account = BalanceAccount.objects.get(tenant=tenant)
    assert (account.currency, account.hard_stop) == ("EUR", False)

    stopped = staff.patch(url, {"hard_stop": True}, format="json")  # currency kept
    assert stopped.status_code == 200 and stopped.json()["hard_stop"] is True
    assert BalanceAccount.objects.get(tenant=tenant).hard_stop is True
    assert BalanceAccount.objects.filter(tenant=tenant).count() == 1

    other_currency = staff.patch(url, {"hard_stop": False, "currency": "USD"}, format="json")
    assert other_currency.status_code == 409
    assert BalanceAccount.objects.get(tenant=tenant).hard_stop is True
    assert staff.patch(url, {}, format="json").status_code == 400
    assert (
        staff.patch(url, {"hard_stop": True, "currency": "ZZZ"}, format="json").status_code == 400
    )


def test_the_schema_documents_the_balance_endpoints(staff: APIClient) -> None:
    schema = staff.get("/api/v1/schema", {"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"get"} <= set(paths["/api/v1/balance"])
    assert {"get"} <= set(paths["/api/v1/balance/entries"])
    assert {"get", "post"} <= set(paths["/api/v1/tenants/{tenant_id}/credits"])
    assert {"get", "patch"} <= set(paths["/api/v1/tenants/{tenant_id}/balance"])


def test_admin_shows_balances_read_only(acme, client) -> None:  # type: ignore[no-untyped-def]
    tenant, _, grant, _ = acme
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    account = BalanceAccount.objects.get(tenant=tenant)
    with time_machine.travel(at(2026, 10, 10), tick=False):
        listing = client.get("/admin/billing/balanceaccount/")
        page = client.get(f"/admin/billing/balanceaccount/{account.pk}/change/")
    assert listing.status_code == 200 and b"11.000000000000" in listing.content
    assert page.status_code == 200
    assert b"Launch promotion" in page.content and b"acme-promo" in page.content  # the ledger
    assert b"9.000000000000" in page.content  # remaining
    assert b'name="hard_stop"' in page.content and b'name="entries-0-amount"' not in page.content
    entries = client.get("/admin/billing/balanceentry/", {"q": "acme-promo"})
    assert entries.status_code == 200 and b"Launch promotion" not in entries.content
    assert client.get("/admin/billing/balanceentry/", {"kind__exact": "grant"}).status_code == 200
    assert client.get("/admin/billing/balanceentry/add/").status_code == 403
    assert client.get("/admin/billing/balanceaccount/add/").status_code == 403
    detail = client.get(f"/admin/billing/balanceentry/{grant.pk}/change/")
    assert detail.status_code == 200 and b'name="amount"' not in detail.content  # view only
