"""The staff roles get the alias permissions `api.permissions.ROLES` now names (decision
0117): the operator adds, changes and views aliases (routing policy, rules, attempts);
finance-read and finance-write view them.

Additive and idempotent, like 0021: the roles' other permissions are left as they are.
Frozen here (a later change to ROLES needs its own migration)."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "operator": ("add_alias", "change_alias", "view_alias"),
    "finance-read": ("view_alias",),
    "finance-write": ("view_alias",),
}


def grant(apps, schema_editor):  # type: ignore[no-untyped-def]
    create_permissions(global_apps.get_app_config("metering"), verbosity=0, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, codenames in GRANTS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = permission_model.objects.filter(
            content_type__app_label="metering", codename__in=codenames
        )
        assert permissions.count() == len(codenames), f"missing permissions for {role}"
        group.permissions.add(*permissions)


def revoke(apps, schema_editor):  # type: ignore[no-untyped-def]
    group_model = apps.get_model("auth", "Group")
    for group in group_model.objects.filter(name__in=GRANTS):
        group.permissions.remove(
            *group.permissions.filter(
                content_type__app_label="metering", codename__in=GRANTS[group.name]
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0023_rollup_route"),
        ("metering", "0021_provider_roles"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
