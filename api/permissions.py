"""Who among staff may do what: the roles that bundle Django permissions, and the REST
API's permission classes. The permissions themselves are the apps' own
(`metering/permissions.py`, `billing/permissions.py`); the admin checks the same ones.

Invariants:
- `is_staff` grants nothing here: a staff operation needs its Django permission (given
  through a role's group or directly); an active superuser holds every permission.
- A tenant API key holds no permission: it reads its own tenant's data, where a view says
  tenants may, and nothing else.
- Every staff check names one permission per view and HTTP method; a method a view does
  not name is refused to staff (fail closed). A refusal is a 403 in the API's error format
  naming the permission that was missing.
- A role is a Django group whose permissions are exactly `ROLES[role]`: `roles_sync` sets
  them (`staff_role_set`), adding and removing as needed. A data migration does the same
  with its own frozen copy of the roles (billing/migrations/0006_staff_roles.py): when
  `ROLES` changes, add a migration that sets the new permissions.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth import get_user_model
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from api.authentication import TenantPrincipal
from billing.permissions import (
    ACCELERATOR_VIEW,
    ALERT_REDELIVER,
    ALERT_VIEW,
    BALANCE_CHANGE,
    BALANCE_ENTRY_VIEW,
    BALANCE_VIEW,
    CREDIT_GRANT,
    CREDIT_NOTE_ISSUE,
    HARD_STOP_CHANGE,
    INVOICE_EXPORT,
    INVOICE_RESEND,
    INVOICE_VIEW,
    INVOICE_VOID,
    MARGINS_VIEW,
    PLAN_VERSION_PUBLISH,
    PLAN_VERSION_VIEW,
    PLAN_VIEW,
    SUBSCRIPTION_VIEW,
)
from config.errors import ApplicationError
from metering.permissions import APIKEY_REVOKE, RECONCILIATION_VIEW, TENANT_VIEW, USAGE_VIEW


def _model_perms(label: str, models: Iterable[str], actions: Iterable[str]) -> set[str]:
    return {f"{label}.{action}_{model}" for model in models for action in actions}


# The imported provider reports (decision 0116): written by the importer only. The
# operator sees the raw pages (fetches) too; finance sees the buckets and their history.
PROVIDER_REPORT_MODELS = [
    "providerreportfetch",
    "providerusagebucket",
    "providercostbucket",
    "providerbucketrevision",
]

VIEW, EDIT, ALL = ("view",), ("view", "add", "change"), ("view", "add", "change", "delete")

FINANCE_READ: frozenset[str] = frozenset(
    {
        INVOICE_VIEW,
        INVOICE_EXPORT,
        MARGINS_VIEW,
        BALANCE_VIEW,
        BALANCE_ENTRY_VIEW,
        ALERT_VIEW,
        USAGE_VIEW,
        TENANT_VIEW,
        PLAN_VIEW,
        PLAN_VERSION_VIEW,
        SUBSCRIPTION_VIEW,
        ACCELERATOR_VIEW,
        RECONCILIATION_VIEW,
    }
    | _model_perms(
        "billing",
        [
            "invoiceline",
            "creditnote",
            "invoicesequence",
            "stripecustomer",
            "stripeevent",
            "pricecomponent",
            "pricetier",
            "costbasisversion",
            "deployment",
            "marginpolicy",
        ],
        VIEW,
    )
    | _model_perms("metering", ["usagerollup", "servingcostrate", "alias", "tenantmember"], VIEW)
    | _model_perms(
        "metering",
        ["provideraccount", "providerusagebucket", "providercostbucket", "providerbucketrevision"],
        VIEW,
    )
)

ROLES: Mapping[str, frozenset[str]] = {
    # Runs the service: tenants and their console members, keys, routes, limits, plans
    # (publishing included), subscriptions, the hardware cost basis, the provider
    # accounts. Moves no money after the fact.
    "operator": frozenset(
        {
            APIKEY_REVOKE,
            PLAN_VERSION_PUBLISH,
            USAGE_VIEW,
            ALERT_VIEW,
            ALERT_REDELIVER,
            RECONCILIATION_VIEW,
        }
        | _model_perms("metering", ["tenant", "apikey", "alias"], EDIT)
        | _model_perms(
            "metering",
            ["route", "spendlimit", "ratelimit", "reasoningpolicy", "tenantmember"],
            ALL,
        )
        | _model_perms("metering", ["usagerollup", "servingcostrate", "holdcap"], VIEW)
        | _model_perms("metering", ["provideraccount"], EDIT)
        | _model_perms("metering", [*PROVIDER_REPORT_MODELS, "upstreamkeyperiod"], VIEW)
        | _model_perms("billing", ["plan", "planversion", "subscription"], EDIT)
        | _model_perms(
            "billing", ["pricecomponent", "pricetier", "webhookendpoint", "operatorendpoint"], ALL
        )
        | _model_perms("billing", ["costbasisversion", "marginpolicy", "deployment"], EDIT)
        | _model_perms("billing", ["acceleratortype", "calibrationrun"], VIEW)
    ),
    # Reads invoices, exports, margins and balances of every tenant.
    "finance-read": FINANCE_READ,
    # finance-read, and corrects money: credit notes, void, resend to Stripe,
    # tenant credits, the hard stop.
    "finance-write": FINANCE_READ
    | {
        INVOICE_VOID,
        INVOICE_RESEND,
        CREDIT_NOTE_ISSUE,
        CREDIT_GRANT,
        HARD_STOP_CHANGE,
        BALANCE_CHANGE,
    },
}


def may(user: Any, permission: str) -> bool:
    """Whether this caller holds the permission; a tenant key or anonymous caller never does."""
    if user is None or isinstance(user, TenantPrincipal) or not user.is_authenticated:
        return False
    return bool(user.has_perm(permission))


# --- roles as Django groups --------------------------------------------------------------


class UnknownPermission(ApplicationError):
    code = "unknown_permission"


def roles_sync(apps: Any) -> None:
    """Make each role's group hold exactly its permissions (created if missing).

    `apps` is the app registry. Permissions are created first, so a role may name one
    before Django's post-migrate step has created it. A permission that does not exist is
    an error."""
    for label in ("metering", "billing"):
        create_permissions(global_apps.get_app_config(label), verbosity=0, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, wanted in ROLES.items():
        query = Q(pk__in=[])
        for name in wanted:
            label, codename = name.split(".")
            query |= Q(content_type__app_label=label, codename=codename)
        found = permission_model.objects.filter(query).select_related("content_type")
        missing = wanted - {f"{p.content_type.app_label}.{p.codename}" for p in found}
        if missing:
            raise UnknownPermission(
                f"Role {role} names permissions that do not exist.",
                {"missing": sorted(missing)},
            )
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.set(found)


@transaction.atomic
def staff_role_set(*, username: str, role: str, remove: bool = False) -> list[str]:
    """Give a user a role (or take it away) and return the roles it holds afterwards.

    The role's group is synced first, so the group always holds exactly `ROLES[role]`.
    Adding a role also sets `is_staff`, which only lets the user sign in to the admin;
    removing one leaves it (it grants nothing by itself). Idempotent."""
    if role not in ROLES:
        raise ApplicationError(f"Unknown role {role!r}.", {"roles": sorted(ROLES)})
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ApplicationError(f"No such user {username!r}.")
    roles_sync(global_apps)
    group = Group.objects.get(name=role)
    if remove:
        user.groups.remove(group)
    else:
        user.groups.add(group)
        if not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
    return sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True))


# --- the REST API ------------------------------------------------------------------------


class MissingPermission(ApplicationError):
    status = 403
    code = "permission_denied"


_GRANTED = "reckon_staff_permission"
_READ_ALIASES = {"HEAD": "GET", "OPTIONS": "GET"}


class _Requires(BasePermission):
    """Per-method permission for staff; built by `staff_only` and `tenant_or_staff`."""

    by_method: Mapping[str, str] = {}
    tenants_allowed = False
    key_scope: str | None = None

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if isinstance(user, TenantPrincipal):
            if not self.tenants_allowed:
                raise MissingPermission("This operation is for staff, not tenant API keys.")
            if self.key_scope is not None and not key_has_scope(user, self.key_scope):
                raise MissingPermission(
                    f"This API key lacks the {self.key_scope} scope.",
                    {"required_scope": self.key_scope},
                )
            return True
        if user is None or not user.is_authenticated:
            return False  # DRF answers 401 with the authentication challenge
        method = _READ_ALIASES.get(request.method or "", request.method or "")
        needed = self.by_method.get(method)
        if needed is None:
            if not hasattr(view, (request.method or "").lower()):
                return True  # the view has no such method: DRF answers 405
            raise MissingPermission(f"{method} is not open to staff here.")
        if not may(user, needed):
            raise MissingPermission(
                f"Requires the permission {needed}.", {"required_permission": needed}
            )
        setattr(request, _GRANTED, needed)
        return True


def staff_only(**by_method: str) -> type[BasePermission]:
    """Staff holding the permission named for the request's method, e.g.
    `staff_only(GET=PLAN_VIEW, POST=PLAN_ADD)`; tenant keys are refused."""
    return type("StaffOnly", (_Requires,), {"by_method": by_method})


def tenant_or_staff(*, key_scope: str | None = None, **by_method: str) -> type[BasePermission]:
    """A tenant key (the view scopes it to its own tenant) or staff holding the permission
    named for the request's method. With `key_scope` (e.g. `BILLING_SCOPE`), a tenant key
    without that scope is refused (403 naming the scope)."""
    return type(
        "TenantOrStaff",
        (_Requires,),
        {"by_method": by_method, "tenants_allowed": True, "key_scope": key_scope},
    )


# Key scopes: what a tenant API key may read beyond usage and its keys.
BILLING_SCOPE = "billing"  # invoices, the upcoming invoice, the balance, balance alerts


def key_has_scope(principal: TenantPrincipal, scope: str) -> bool:
    """Whether this tenant key holds the scope (an unknown scope: no)."""
    if scope == BILLING_SCOPE:
        return bool(principal.api_key.can_read_billing)
    return False


def may_read_billing(request: Request) -> bool:
    """Whether the caller may see the tenant's money: staff (their permission is checked
    by the view) or a tenant key with the billing scope."""
    user = request.user
    return not isinstance(user, TenantPrincipal) or key_has_scope(user, BILLING_SCOPE)


def staff_permission_granted(request: Request) -> str | None:
    """The permission this request's staff caller was checked for, None if none was: code
    that widens a query beyond one tenant asks this, so a view without a staff permission
    declared gives staff nothing."""
    return getattr(request, _GRANTED, None)
