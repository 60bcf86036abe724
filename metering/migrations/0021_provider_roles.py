"""The staff roles get the provider report permissions `api.permissions.ROLES` now names
(decision 0116, review S13): the operator adds, changes and views provider accounts and
views the imported reports (fetches, usage and cost buckets, revisions) and the
routes' upstream key history; finance-read and
finance-write view the accounts, buckets and revisions.

Additive and idempotent, like 0019: the roles' other permissions are left as they are.
Frozen here (a later change to ROLES needs its own migration)."""

from django.db import migrations

from metering.migration_ops import role_grants

FINANCE = (
    "view_provideraccount",
    "view_providerusagebucket",
    "view_providercostbucket",
    "view_providerbucketrevision",
)
GRANTS = {
    "operator": (
        "add_provideraccount",
        "change_provideraccount",
        "view_provideraccount",
        "view_providerreportfetch",
        "view_providerusagebucket",
        "view_providercostbucket",
        "view_providerbucketrevision",
        "view_upstreamkeyperiod",
    ),
    "finance-read": FINANCE,
    "finance-write": FINANCE,
}


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0020_upstream_key_periods"),
        ("billing", "0006_staff_roles"),
    ]

    operations = [role_grants("metering", GRANTS)]
