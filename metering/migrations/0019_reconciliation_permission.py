"""The staff roles that read reconciliation rows (operator, finance-read, finance-write)
get `metering.view_reconciliationrow`, as `api.permissions.ROLES` now says.

Additive and idempotent: the roles' other permissions are left as they are (billing's
0006_staff_roles set them with its own frozen copy). Runs after that migration, which
creates the groups."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

PERMISSION = ("metering", "view_reconciliationrow")
ROLES = ("operator", "finance-read", "finance-write")


def grant(apps, schema_editor):  # type: ignore[no-untyped-def]
    create_permissions(global_apps.get_app_config("metering"), verbosity=0, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission = apps.get_model("auth", "Permission").objects.get(
        content_type__app_label=PERMISSION[0], codename=PERMISSION[1]
    )
    for role in ROLES:
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.add(permission)


def revoke(apps, schema_editor):  # type: ignore[no-untyped-def]
    group_model = apps.get_model("auth", "Group")
    for group in group_model.objects.filter(name__in=ROLES):
        group.permissions.remove(
            *group.permissions.filter(
                content_type__app_label=PERMISSION[0], codename=PERMISSION[1]
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0018_rollup_provider_account"),
        ("billing", "0006_staff_roles"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
