"""Console members: `manage.py tenant_member_set` (a new member, a password reset, the
refusals), members in the admin (their own page and an inline on the tenant's), who among
staff may manage them, and migration metering 0026 that hands the roles those
permissions."""

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from api.permissions import ROLES
from metering.models import TenantMember
from tests.factories import TenantFactory
from tests.migration_helpers import leaf, migrate
from tests.staff import staff_user

pytestmark = pytest.mark.django_db

MEMBER_PERMS = {f"metering.{a}_tenantmember" for a in ("view", "add", "change", "delete")}


def _password(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("password (shown once): ")]
    assert len(lines) == 1
    return lines[0].split(": ", 1)[1]


def test_the_command_creates_a_member_and_resets_a_password(capsys) -> None:  # type: ignore[no-untyped-def]
    acme = TenantFactory(name="acme")
    call_command("tenant_member_set", "acme", "ann", "--role", "billing", "--email", "a@x.io")
    out = capsys.readouterr().out
    assert "ann is billing of acme" in out
    first = _password(out)
    assert authenticate(username="ann", password=first) is not None
    member = TenantMember.objects.get(user__username="ann")
    assert (member.tenant, member.role, member.user.email) == (acme, "billing", "a@x.io")

    call_command("tenant_member_set", str(acme.pk), "ann", "--role", "owner")  # by id
    out = capsys.readouterr().out
    assert "password" not in out  # a role change leaves the password as it was
    assert TenantMember.objects.get(user__username="ann").role == "owner"
    assert authenticate(username="ann", password=first) is not None

    call_command("tenant_member_set", "acme", "ann", "--role", "owner", "--reset-password")
    second = _password(capsys.readouterr().out)
    assert second != first
    assert authenticate(username="ann", password=first) is None
    assert authenticate(username="ann", password=second) is not None
    assert TenantMember.objects.filter(user__username="ann").count() == 1


def test_the_command_refuses_staff_another_tenants_member_and_unknowns() -> None:
    TenantFactory(name="acme")
    TenantFactory(name="globex")
    staff_user("ops", "operator")
    call_command("tenant_member_set", "acme", "ann", "--role", "developer")
    with pytest.raises(CommandError, match="is staff"):
        call_command("tenant_member_set", "acme", "ops", "--role", "owner")
    with pytest.raises(CommandError, match="member of another tenant"):
        call_command("tenant_member_set", "globex", "ann", "--role", "owner")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("tenant_member_set", "initech", "bob", "--role", "owner")
    with pytest.raises(CommandError):
        call_command("tenant_member_set", "acme", "bob", "--role", "admin")
    assert not TenantMember.objects.filter(user__username__in=["ops", "bob"]).exists()
    assert TenantMember.objects.get(user__username="ann").tenant.name == "acme"


def test_the_roles_hold_the_member_permissions() -> None:
    assert MEMBER_PERMS <= ROLES["operator"]
    assert ROLES["finance-read"] & MEMBER_PERMS == {"metering.view_tenantmember"}
    assert ROLES["finance-write"] & MEMBER_PERMS == {"metering.view_tenantmember"}


def _group_member_perms(role: str) -> set[str]:
    """The role's member permissions; none when its group does not exist (an earlier
    transactional test's flush empties auth_group, and only 0026 makes it again here)."""
    return {
        f"metering.{codename}"
        for codename in Permission.objects.filter(
            group__name=role, content_type__app_label="metering", codename__endswith="_tenantmember"
        ).values_list("codename", flat=True)
    }


@pytest.mark.django_db(transaction=True)
def test_migration_0026_grants_and_takes_back_the_member_permissions() -> None:
    try:
        migrate([("metering", "0025_tenant_member")])
        for role in ("operator", "finance-read", "finance-write"):
            assert _group_member_perms(role) == set()
        migrate([("metering", "0026_tenant_member_roles")])
        assert _group_member_perms("operator") == MEMBER_PERMS
        assert _group_member_perms("finance-read") == {"metering.view_tenantmember"}
        assert _group_member_perms("finance-write") == {"metering.view_tenantmember"}
    finally:
        migrate(leaf())


def _admin(username: str, role: str) -> Client:
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(staff_user(username, role))
    return client


def test_an_operator_manages_members_in_the_admin() -> None:
    acme = TenantFactory(name="acme")
    person = get_user_model().objects.create_user("ann")
    operator = _admin("ops", "operator")
    assert operator.get("/admin/metering/tenantmember/").status_code == 200
    added = operator.post(
        "/admin/metering/tenantmember/add/",
        {"user": person.pk, "tenant": acme.pk, "role": "developer"},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    member = TenantMember.objects.get(user=person)
    assert (member.tenant, member.role) == (acme, "developer")
    listed = operator.get("/admin/metering/tenantmember/", {"q": "ann"}).content.decode()
    assert "ann" in listed and "acme" in listed
    tenant_page = operator.get(f"/admin/metering/tenant/{acme.pk}/change/").content.decode()
    assert "members-TOTAL_FORMS" in tenant_page and 'value="developer" selected' in tenant_page

    # a staff user is refused as a member (staff act through their roles)
    staff = staff_user("root2", "finance-read")
    refused = operator.post(
        "/admin/metering/tenantmember/add/",
        {"user": staff.pk, "tenant": acme.pk, "role": "owner"},
    )
    assert refused.status_code == 200 and b"staff roles" in refused.content
    assert not TenantMember.objects.filter(user=staff).exists()


def test_finance_read_views_members_but_does_not_change_them() -> None:
    acme = TenantFactory(name="acme")
    member = TenantMember.objects.create(
        user=get_user_model().objects.create_user("ann"), tenant=acme, role="billing"
    )
    finance = _admin("fin", "finance-read")
    assert finance.get("/admin/metering/tenantmember/").status_code == 200
    assert finance.get("/admin/metering/tenantmember/add/").status_code == 403
    change = finance.post(
        f"/admin/metering/tenantmember/{member.pk}/change/",
        {"user": member.user_id, "tenant": acme.pk, "role": "owner"},
    )
    assert change.status_code == 403
    assert TenantMember.objects.get(pk=member.pk).role == "billing"
