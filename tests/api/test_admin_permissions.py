"""The admin asks for the same permissions as the REST API (each app's `permissions.py`):
every custom action, and the fields that move money or limits, per role, through real
sessions."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from billing.balances import balance_hard_stop_set
from billing.invoicing.close import period_close
from billing.models import BalanceAccount, CreditNote, Invoice, PlanVersion
from billing.plans import plan_create, plan_version_create, subscription_create
from metering.models import ApiKey, Tenant
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, at, use, version
from tests.staff import staff_user

pytestmark = pytest.mark.django_db


def session(role: str | None) -> Client:
    client = Client()
    if role == "superuser":
        client.force_login(get_user_model().objects.create_superuser("root", "r@x.io", "pw"))
    else:
        client.force_login(staff_user("someone", *([role] if role else [])))
    return client


def run_action(client: Client, model: str, action: str, pk: object) -> int:
    response = client.post(
        f"/admin/{model}/", {"action": action, "_selected_action": [str(pk)], "index": 0}
    )
    return response.status_code


@pytest.fixture
def invoice() -> Invoice:
    key = ApiKeyFactory(tenant__name="acme")
    subscription_create(
        tenant=key.tenant, plan_version=version("std", base="10", output="4"), starts_at=SEP
    )
    use(key, at(2026, 9, 5), output_tokens=1_000_000)
    return period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))


@pytest.fixture
def draft() -> PlanVersion:
    return plan_version_create(
        plan=plan_create(code="next", name="Next"),
        currency="USD",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        base_fee=Decimal("10"),
        components=[],
    )


INVOICE_ACTIONS = {
    "operator": set(),
    "finance-read": {"download_pdf"},
    "finance-write": {"void", "full_credit_note", "resend_to_stripe", "download_pdf"},
    "superuser": {"void", "full_credit_note", "resend_to_stripe", "download_pdf"},
}


@pytest.mark.parametrize("role", list(INVOICE_ACTIONS))
def test_invoice_actions_offered_per_role(invoice: Invoice, role: str) -> None:
    response = session(role).get("/admin/billing/invoice/")
    if not INVOICE_ACTIONS[role]:
        assert response.status_code == 403  # the operator does not read invoices
        return
    assert response.status_code == 200
    offered = {
        a for a in INVOICE_ACTIONS["superuser"] if f'value="{a}"'.encode() in response.content
    }
    assert offered == INVOICE_ACTIONS[role]


def test_finance_read_cannot_void_or_credit_an_invoice_in_the_admin(invoice: Invoice) -> None:
    client = session("finance-read")
    run_action(client, "billing/invoice", "void", invoice.pk)
    run_action(client, "billing/invoice", "full_credit_note", invoice.pk)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED
    assert not CreditNote.objects.exists()


def test_finance_write_voids_and_credits_in_the_admin(invoice: Invoice) -> None:
    client = session("finance-write")
    assert run_action(client, "billing/invoice", "full_credit_note", invoice.pk) == 302
    assert CreditNote.objects.filter(invoice=invoice).count() == 1
    assert run_action(client, "billing/invoice", "void", invoice.pk) == 302
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID


def test_a_staff_user_without_permissions_gets_nothing_from_the_admin(
    invoice: Invoice, draft: PlanVersion
) -> None:
    client = session(None)
    for path in (
        "/admin/billing/invoice/",
        f"/admin/billing/planversion/{draft.pk}/change/",
        "/admin/billing/balanceaccount/",
        "/admin/metering/tenant/",
    ):
        assert client.get(path).status_code == 403, path
    run_action(client, "billing/invoice", "void", invoice.pk)
    run_action(client, "billing/planversion", "publish", draft.pk)
    invoice.refresh_from_db()
    draft.refresh_from_db()
    assert (invoice.status, draft.status) == ("finalized", "draft")


@pytest.mark.parametrize(("role", "published"), [("finance-read", False), ("operator", True)])
def test_publishing_in_the_admin_needs_the_publish_permission(
    draft: PlanVersion, role: str, published: bool
) -> None:
    run_action(session(role), "billing/planversion", "publish", draft.pk)
    draft.refresh_from_db()
    assert draft.is_published is published


def test_a_draft_plan_version_is_read_only_without_the_change_permission(
    draft: PlanVersion,
) -> None:
    """The admin used to let anyone who reached a draft's page edit it (its editability
    check replaced the permission check instead of adding to it)."""
    client = session("finance-read")
    url = f"/admin/billing/planversion/{draft.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200 and b'name="base_fee"' not in page.content
    client.post(url, {"plan": draft.plan_id, "version": 1, "base_fee": "0", "currency": "USD"})
    draft.refresh_from_db()
    assert draft.base_fee == Decimal("10")
    assert b'name="base_fee"' in session("superuser").get(url).content


@pytest.mark.parametrize(("role", "editable"), [("finance-read", False), ("finance-write", True)])
def test_the_hard_stop_is_editable_only_with_its_permission(role: str, editable: bool) -> None:
    tenant = Tenant.objects.create(name="acme")
    balance_hard_stop_set(tenant_id=tenant.pk, hard_stop=True)
    account = BalanceAccount.objects.get(tenant=tenant)
    client = session(role)
    url = f"/admin/billing/balanceaccount/{account.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert (b'name="hard_stop"' in page.content) is editable
    client.post(url, {"entries-TOTAL_FORMS": 0, "entries-INITIAL_FORMS": 0})  # unchecked: off
    account.refresh_from_db()
    assert account.hard_stop is (not editable)


@pytest.mark.parametrize(("role", "issued"), [("finance-read", 0), ("operator", 1)])
def test_issuing_a_key_in_the_admin_needs_the_key_permission(role: str, issued: int) -> None:
    tenant = Tenant.objects.create(name="acme")
    run_action(session(role), "metering/tenant", "issue_api_key", tenant.pk)
    assert ApiKey.objects.filter(tenant=tenant).count() == issued


@pytest.mark.parametrize(("role", "revoked"), [("finance-read", False), ("operator", True)])
def test_revoking_a_key_in_the_admin_needs_the_revoke_permission(role: str, revoked: bool) -> None:
    key = ApiKeyFactory()
    run_action(session(role), "metering/apikey", "revoke", key.pk)
    key.refresh_from_db()
    assert (key.revoked_at is not None) is revoked


def _with_permissions(*codenames: str) -> Client:
    user = staff_user("clerk")
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_editing_a_balance_is_not_enough_to_change_its_hard_stop() -> None:
    """Model permissions are too coarse for the one field that decides whether calls are
    refused: it needs `change_hard_stop` as well."""
    tenant = Tenant.objects.create(name="acme")
    balance_hard_stop_set(tenant_id=tenant.pk, hard_stop=True)
    account = BalanceAccount.objects.get(tenant=tenant)
    client = _with_permissions("view_balanceaccount", "change_balanceaccount")
    url = f"/admin/billing/balanceaccount/{account.pk}/change/"
    assert b'name="hard_stop"' not in client.get(url).content
    client.post(url, {"entries-TOTAL_FORMS": 0, "entries-INITIAL_FORMS": 0})
    account.refresh_from_db()
    assert account.hard_stop is True


def test_editing_keys_is_not_enough_to_revoke_them() -> None:
    key = ApiKeyFactory()
    client = _with_permissions("view_apikey", "change_apikey")
    assert client.get("/admin/metering/apikey/").status_code == 200
    run_action(client, "metering/apikey", "revoke", key.pk)
    key.refresh_from_db()
    assert key.revoked_at is None
