"""Who may open the console's pages: a member of a tenant deactivated mid-session is
refused on every member page, a deactivated user is sent to sign in, and a staff page
needs `is_staff` as well as the permission."""

from typing import Any

import pytest
from django.test import Client

from metering.models import ApiKey
from metering.services import tenant_member_set
from tests.factories import ApiKeyFactory, TenantFactory
from tests.staff import staff_user

pytestmark = pytest.mark.django_db
HOST = "127.0.0.1"
MISSING_INVOICE = 999_999_999

# Every `member_page` (URL, method); `{key}` is a key of the member's own tenant.
MEMBER_PAGES = [
    ("/console/overview", "get"),
    ("/console/usage", "get"),
    ("/console/usage.csv?chart=usage-by-class", "get"),
    ("/console/keys", "get"),
    ("/console/keys/new", "post"),
    ("/console/keys/{key}", "get"),
    ("/console/keys/{key}/revoke", "post"),
    ("/console/invoices", "get"),
    (f"/console/invoices/{MISSING_INVOICE}", "get"),
    (f"/console/invoices/{MISSING_INVOICE}/pdf", "get"),
    ("/console/balance", "get"),
]


def _owner() -> tuple[Client, Any, ApiKey]:
    tenant = TenantFactory()
    key = ApiKeyFactory(tenant=tenant)
    member = tenant_member_set(tenant=tenant, username="olga", role="owner").member
    client = Client(HTTP_HOST=HOST)
    client.force_login(member.user)
    return client, member, key


def _open(client: Client, url: str, method: str) -> Any:
    return getattr(client, method)(url)


@pytest.mark.parametrize(("url", "method"), MEMBER_PAGES)
def test_a_member_of_a_tenant_deactivated_mid_session_is_refused(url: str, method: str) -> None:
    client, member, key = _owner()
    url = url.format(key=key.pk)
    if method == "get" and "invoices/" not in url:
        # signed in and allowed before the tenant is deactivated
        assert _open(client, url, method).status_code == 200
    member.tenant.is_active = False
    member.tenant.save(update_fields=["is_active"])
    response = _open(client, url, method)
    assert response.status_code == 403
    assert "members of a tenant" in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None
    assert ApiKey.objects.filter(tenant=member.tenant).count() == 1


@pytest.mark.parametrize(("url", "method"), MEMBER_PAGES)
def test_a_user_deactivated_mid_session_is_sent_to_sign_in(url: str, method: str) -> None:
    client, member, key = _owner()
    url = url.format(key=key.pk)
    member.user.is_active = False
    member.user.save(update_fields=["is_active"])
    response = _open(client, url, method)
    assert response.status_code == 302
    assert response["Location"].startswith("/console/login?next=")
    key.refresh_from_db()
    assert key.revoked_at is None


def test_a_non_staff_user_holding_a_staff_roles_permissions_is_refused() -> None:
    # finance-read's group (and so `billing.view_margins`), but not staff: the console's
    # staff pages are for staff (`staff_page` checks both).
    user = staff_user("cfo", "finance-read")
    client = Client(HTTP_HOST=HOST)
    client.force_login(user)
    assert client.get("/console/staff/margins").status_code == 200
    user.is_staff = False
    user.save(update_fields=["is_staff"])
    assert user.has_perm("billing.view_margins")
    response = client.get("/console/staff/margins")
    assert response.status_code == 403
    assert "billing.view_margins" in response.content.decode()
