"""The staff roles get the alias permissions `api.permissions.ROLES` now names (decision
0117): the operator adds, changes and views aliases (routing policy, rules, attempts);
finance-read and finance-write view them.

Additive and idempotent, like 0021: the roles' other permissions are left as they are.
Frozen here (a later change to ROLES needs its own migration)."""

from django.db import migrations

from metering.migration_ops import role_grants

GRANTS = {
    "operator": ("add_alias", "change_alias", "view_alias"),
    "finance-read": ("view_alias",),
    "finance-write": ("view_alias",),
}


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0023_rollup_route"),
        ("metering", "0021_provider_roles"),
    ]

    operations = [role_grants("metering", GRANTS)]
