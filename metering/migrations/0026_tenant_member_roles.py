"""The staff roles get the console-member permissions `api.permissions.ROLES` now names:
the operator adds, changes, deletes and views tenant members (who signs in to a tenant's
console, with which role); finance-read and finance-write view them.

Additive and idempotent, like 0021 and 0024: the roles' other permissions are left as they
are. Frozen here (a later change to ROLES needs its own migration)."""

from django.db import migrations

from metering.migration_ops import role_grants

GRANTS = {
    "operator": (
        "add_tenantmember",
        "change_tenantmember",
        "delete_tenantmember",
        "view_tenantmember",
    ),
    "finance-read": ("view_tenantmember",),
    "finance-write": ("view_tenantmember",),
}


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0025_tenant_member"),
    ]

    operations = [role_grants("metering", GRANTS)]
