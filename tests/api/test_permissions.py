"""Staff act only within their permissions (issue #12, defect 4): every operator and
finance operation of the REST API, for every role, through real Django users and groups."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from api import permissions as perm
from billing import permissions as billing_perm
from billing.balances import balance_hard_stop_set
from billing.invoicing.close import period_close
from billing.models import (
    AcceleratorType,
    BalanceAccount,
    BalanceEntry,
    CostBasisVersion,
    CreditNote,
    Invoice,
    Plan,
    PlanVersion,
)
from billing.plans import plan_create, plan_version_create, subscription_create
from metering import permissions as metering_perm
from metering.models import Tenant
from metering.services import api_key_create
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, at, use, version
from tests.staff import staff_client, staff_user

pytestmark = pytest.mark.django_db


@dataclass
class World:
    tenant: Tenant
    invoice: Invoice
    draft: PlanVersion


@pytest.fixture
def world() -> World:
    """A tenant on a plan with a finalized September invoice, a prepaid balance that stops
    calls, a draft plan version and an accelerator type."""
    key = ApiKeyFactory(tenant__name="acme")
    standard = version("standard", base="10", output="4.00")
    subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
    use(key, at(2026, 9, 5), output_tokens=1_000_000)
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    balance_hard_stop_set(tenant_id=key.tenant_id, hard_stop=True)
    draft = plan_version_create(
        plan=plan_create(code="next", name="Next"),
        currency="USD",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        components=[],
    )
    AcceleratorType.objects.create(key="gpu-x", vendor="nvidia")
    return World(tenant=key.tenant, invoice=invoice, draft=draft)


def _written() -> dict[str, int]:
    """Rows the write operations below would add or change."""
    return {
        "balance_entries": BalanceEntry.objects.count(),
        "hard_stops_off": BalanceAccount.objects.filter(hard_stop=False).count(),
        "published": PlanVersion.objects.filter(status="published").count(),
        "credit_notes": CreditNote.objects.count(),
        "plans": Plan.objects.count(),
        "cost_bases": CostBasisVersion.objects.count(),
    }


# operation: (method, path, body, status when allowed, permission it needs)
OPERATIONS = {
    "read usage": (
        "get",
        "/api/v1/usage/records?tenant={tenant}",
        None,
        200,
        metering_perm.USAGE_VIEW,
    ),
    "read balance": (
        "get",
        "/api/v1/tenants/{tenant}/balance",
        None,
        200,
        billing_perm.BALANCE_VIEW,
    ),
    "read balance via scope": (
        "get",
        "/api/v1/balance?tenant={tenant}",
        None,
        200,
        billing_perm.BALANCE_VIEW,
    ),
    "grant credit": (
        "post",
        "/api/v1/tenants/{tenant}/credits",
        {"kind": "grant", "amount": "1000000", "idempotency_key": "gift"},
        201,
        billing_perm.CREDIT_GRANT,
    ),
    "hard stop off": (
        "patch",
        "/api/v1/tenants/{tenant}/balance",
        {"hard_stop": False},
        200,
        billing_perm.HARD_STOP_CHANGE,
    ),
    "read plans": ("get", "/api/v1/plans", None, 200, billing_perm.PLAN_VIEW),
    "create plan": (
        "post",
        "/api/v1/plans",
        {"code": "p2", "name": "P2"},
        201,
        billing_perm.PLAN_ADD,
    ),
    "publish plan version": (
        "post",
        "/api/v1/plan-versions/{draft}/publish",
        None,
        200,
        billing_perm.PLAN_VERSION_PUBLISH,
    ),
    "read subscriptions": (
        "get",
        "/api/v1/subscriptions",
        None,
        200,
        billing_perm.SUBSCRIPTION_VIEW,
    ),
    "read invoices": (
        "get",
        "/api/v1/invoices?tenant={tenant}",
        None,
        200,
        billing_perm.INVOICE_VIEW,
    ),
    "read invoice": ("get", "/api/v1/invoices/{invoice}", None, 200, billing_perm.INVOICE_VIEW),
    "preview invoice": (
        "get",
        "/api/v1/invoices/upcoming?tenant={tenant}",
        None,
        200,
        billing_perm.INVOICE_VIEW,
    ),
    "export invoices": (
        "get",
        "/api/v1/invoices/export.csv?period=2026-09",
        None,
        200,
        billing_perm.INVOICE_EXPORT,
    ),
    "issue credit note": (
        "post",
        "/api/v1/invoices/{invoice}/credit-notes",
        {"reason": "goodwill"},
        201,
        billing_perm.CREDIT_NOTE_ISSUE,
    ),
    "read margins": (
        "get",
        "/api/v1/finance/margins?period=2026-09",
        None,
        200,
        billing_perm.MARGINS_VIEW,
    ),
    "read accelerators": ("get", "/api/v1/accelerators", None, 200, billing_perm.ACCELERATOR_VIEW),
    "set cost basis": (
        "post",
        "/api/v1/accelerators/gpu-x/cost-basis",
        {"mode": "rented", "hourly_usd": "2.5", "effective_from": "2026-01-01T00:00:00Z"},
        201,
        billing_perm.COST_BASIS_ADD,
    ),
}

R, W = "read", "write"
# role -> operations it may perform (everything else: 403)
ALLOWED = {
    "operator": {
        "read usage",
        "read plans",
        "create plan",
        "publish plan version",
        "read subscriptions",
        "read accelerators",
        "set cost basis",
    },
    "finance-read": {
        "read usage",
        "read balance",
        "read balance via scope",
        "read plans",
        "read subscriptions",
        "read invoices",
        "read invoice",
        "preview invoice",
        "export invoices",
        "read margins",
        "read accelerators",
    },
}
ALLOWED["finance-write"] = ALLOWED["finance-read"] | {
    "grant credit",
    "hard stop off",
    "issue credit note",
}
ALLOWED["is_staff only"] = set()
ALLOWED["superuser"] = set(OPERATIONS)

TABLE = [
    pytest.param(role, operation, operation in allowed, id=f"{role}-{operation}")
    for role, allowed in ALLOWED.items()
    for operation in OPERATIONS
]


def _client_for(role: str) -> APIClient:
    if role == "superuser":
        client = APIClient()
        client.force_authenticate(get_user_model().objects.create_superuser("root", "r@x.io", "pw"))
        return client
    return staff_client("someone", *([] if role == "is_staff only" else [role]))


def _call(client: APIClient, world: World, operation: str):  # type: ignore[no-untyped-def]
    method, path, body, _, _ = OPERATIONS[operation]
    url = path.format(tenant=world.tenant.pk, invoice=world.invoice.pk, draft=world.draft.pk)
    return (
        getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)
    )


@pytest.mark.parametrize(("role", "operation", "allowed"), TABLE)
def test_role_operation_table(world: World, role: str, operation: str, allowed: bool) -> None:
    client = _client_for(role)
    before = _written()
    response = _call(client, world, operation)
    _, _, _, ok_status, needed = OPERATIONS[operation]
    if allowed:
        assert response.status_code == ok_status, response.content
        return
    assert response.status_code == 403, response.content
    assert response.json()["error"] == {
        "code": "permission_denied",
        "message": f"Requires the permission {needed}.",
        "detail": {"required_permission": needed},
    }
    assert _written() == before  # a refused call writes nothing


def test_issue_12_staff_without_permissions_cannot_move_money(world: World) -> None:
    """As reported: a staff user with no permissions granted a tenant $1,000,000 of credit,
    turned off a hard stop, published a plan version and issued a credit note."""
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("intern", is_staff=True))
    tenant = world.tenant.pk
    responses = {
        "credit": client.post(
            f"/api/v1/tenants/{tenant}/credits",
            {"kind": "grant", "amount": "1000000", "idempotency_key": "gift"},
            format="json",
        ),
        "hard_stop": client.patch(
            f"/api/v1/tenants/{tenant}/balance", {"hard_stop": False}, format="json"
        ),
        "publish": client.post(f"/api/v1/plan-versions/{world.draft.pk}/publish"),
        "credit_note": client.post(
            f"/api/v1/invoices/{world.invoice.pk}/credit-notes", {"reason": "x"}, format="json"
        ),
    }
    assert {k: r.status_code for k, r in responses.items()} == dict.fromkeys(responses, 403)
    assert not BalanceEntry.objects.exists()
    assert BalanceAccount.objects.get(tenant_id=tenant).hard_stop is True
    assert PlanVersion.objects.get(pk=world.draft.pk).status == "draft"
    assert not CreditNote.objects.exists()


def test_staff_without_the_view_permission_read_no_tenant_data(world: World) -> None:
    """Reading across tenants needs the matching view permission, not `is_staff`."""
    nobody = staff_client("nobody")
    tenant = str(world.tenant.pk)
    for path in (
        "/api/v1/usage/records",
        "/api/v1/usage/summary",
        "/api/v1/usage/series?granularity=day&since=2026-11-01T00:00:00Z",
        "/api/v1/usage/alerts",
        "/api/v1/balance",
        "/api/v1/balance/entries",
        "/api/v1/invoices",
        "/api/v1/invoices/upcoming",
        f"/api/v1/invoices/{world.invoice.pk}",
        f"/api/v1/invoices/{world.invoice.pk}/pdf",
        f"/api/v1/invoices/{world.invoice.pk}/recompute",
    ):
        response = nobody.get(path, {"tenant": tenant, "period": "2026-09"})
        assert response.status_code == 403, (path, response.status_code)
        assert response.json()["error"]["code"] == "permission_denied"
    quote = nobody.post(
        "/api/v1/pricing/quote",
        {"plan_version": world.draft.pk, "usage": []},
        format="json",
    )
    assert quote.status_code == 403


def test_a_permission_given_directly_is_enough(world: World) -> None:
    """Roles are groups; a single permission given to a user works the same way."""
    from django.contrib.auth.models import Permission

    user = staff_user("auditor")
    user.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(pk=user.pk))
    assert client.get(f"/api/v1/invoices/{world.invoice.pk}").status_code == 200
    assert (
        client.post(
            f"/api/v1/invoices/{world.invoice.pk}/credit-notes", {"reason": "x"}, format="json"
        ).status_code
        == 403
    )


def test_tenant_keys_keep_their_own_data_and_no_operator_power(world: World) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=world.tenant).raw_key}")
    assert client.get("/api/v1/invoices").status_code == 200
    assert client.get("/api/v1/balance").status_code == 200
    assert client.get(f"/api/v1/invoices/{world.invoice.pk}/pdf").status_code == 200
    refused = client.post(
        f"/api/v1/invoices/{world.invoice.pk}/credit-notes", {"reason": "x"}, format="json"
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert client.get("/api/v1/plans").status_code == 403
    assert not CreditNote.objects.exists()


def test_an_unauthenticated_call_is_still_401(world: World) -> None:
    response = APIClient().post(f"/api/v1/plan-versions/{world.draft.pk}/publish")
    assert response.status_code == 401


def test_a_method_no_permission_is_named_for_is_refused_to_staff(world: World) -> None:
    superuser = _client_for("superuser")
    response = superuser.delete(f"/api/v1/plan-versions/{world.draft.pk}/publish")
    assert response.status_code == 405  # the view has no DELETE
    assert PlanVersion.objects.filter(pk=world.draft.pk).exists()
    # a method the view has but declares no permission for is refused, even to a superuser
    unnamed = type("Unnamed", (perm._Requires,), {"by_method": {"GET": billing_perm.PLAN_VIEW}})

    class Request:
        method = "POST"
        user = get_user_model().objects.get(username="root")

    class View:
        def post(self) -> None: ...

    with pytest.raises(perm.MissingPermission, match="POST is not open to staff"):
        unnamed().has_permission(Request(), View())  # type: ignore[arg-type]


# --- roles, groups and the command ---------------------------------------------------------


def _group_permissions(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }


def test_the_migration_created_each_role_with_exactly_its_permissions() -> None:
    assert {name: _group_permissions(name) for name in perm.ROLES} == {
        name: set(wanted) for name, wanted in perm.ROLES.items()
    }


def test_roles_sync_is_idempotent_and_removes_what_a_role_no_longer_has() -> None:
    from django.contrib.auth.models import Permission

    operator = Group.objects.get(name="operator")
    operator.permissions.add(Permission.objects.get(codename="void_invoice"))
    perm.roles_sync(apps)
    perm.roles_sync(apps)
    assert _group_permissions("operator") == set(perm.ROLES["operator"])
    assert Group.objects.filter(name__in=perm.ROLES).count() == len(perm.ROLES)


def test_finance_write_includes_finance_read_and_nobody_else_moves_money() -> None:
    assert perm.ROLES["finance-read"] < perm.ROLES["finance-write"]
    money = {
        billing_perm.CREDIT_GRANT,
        billing_perm.HARD_STOP_CHANGE,
        billing_perm.CREDIT_NOTE_ISSUE,
        billing_perm.INVOICE_VOID,
    }
    assert not money & perm.ROLES["operator"]
    assert not money & perm.ROLES["finance-read"]


def test_staff_role_set_command_adds_and_removes_a_role(world: World, capsys) -> None:  # type: ignore[no-untyped-def]
    get_user_model().objects.create_user("carol")
    url = f"/api/v1/invoices/{world.invoice.pk}/credit-notes"

    def credit_note_status() -> int:
        client = APIClient()
        client.force_authenticate(get_user_model().objects.get(username="carol"))
        return client.post(url, {"reason": "x", "amount_minor": 1}, format="json").status_code

    assert credit_note_status() == 403
    call_command("staff_role_set", "carol", "--role", "finance-write")
    assert "carol: roles finance-write" in capsys.readouterr().out
    carol = get_user_model().objects.get(username="carol")
    assert carol.is_staff and carol.has_perm(billing_perm.CREDIT_NOTE_ISSUE)
    call_command("staff_role_set", "carol", "--role", "finance-write")  # idempotent
    assert credit_note_status() == 201
    call_command("staff_role_set", "carol", "--role", "finance-write", "--remove")
    assert "carol: roles none" in capsys.readouterr().out
    assert credit_note_status() == 403
    assert CreditNote.objects.count() == 1
    with pytest.raises(CommandError, match="No such user"):
        call_command("staff_role_set", "nobody", "--role", "operator")
    with pytest.raises(CommandError):
        call_command("staff_role_set", "carol", "--role", "admin")


def test_unknown_tenant_ids_for_staff_are_still_not_found(world: World) -> None:
    finance = staff_client("fin", "finance-read")
    assert finance.get("/api/v1/balance", {"tenant": str(uuid.uuid4())}).status_code == 404


def test_every_rest_view_names_its_staff_permissions() -> None:
    """A new view without a declaration would fall back to 'any authenticated caller'."""
    from api.urls import urlpatterns

    undeclared = [
        p.name
        for p in urlpatterns
        if p.name != "schema"
        and not any(issubclass(c, perm._Requires) for c in p.callback.view_class.permission_classes)
    ]
    assert undeclared == []


def test_a_session_login_carries_the_same_permissions(world: World) -> None:
    user = staff_user("sam", "finance-read")
    client = APIClient()
    client.force_login(user)
    assert client.get(f"/api/v1/invoices/{world.invoice.pk}").status_code == 200
    refused = client.post(
        f"/api/v1/invoices/{world.invoice.pk}/credit-notes", {"reason": "x"}, format="json"
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["detail"] == {
        "required_permission": billing_perm.CREDIT_NOTE_ISSUE
    }
    user.is_active = False
    user.save(update_fields=["is_active"])
    deactivated = APIClient()
    deactivated.force_authenticate(user)
    assert deactivated.get(f"/api/v1/invoices/{world.invoice.pk}").status_code == 403
