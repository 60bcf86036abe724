"""The operator role gains the operator's webhook endpoint (reconciliation alerts): add,
change, delete and view `billing.operatorendpoint`. Idempotent; adds only these four, so
whatever else the group holds stays as it is (0006 set the rest)."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

ADDED = ("add", "change", "delete", "view")


def grant(apps, schema_editor):  # type: ignore[no-untyped-def]
    create_permissions(global_apps.get_app_config("billing"), verbosity=0, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    group, _ = group_model.objects.get_or_create(name="operator")
    group.permissions.add(
        *permission_model.objects.filter(
            content_type__app_label="billing",
            codename__in=[f"{action}_operatorendpoint" for action in ADDED],
        )
    )


def revoke(apps, schema_editor):  # type: ignore[no-untyped-def]
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    group = group_model.objects.filter(name="operator").first()
    if group is not None:
        group.permissions.remove(
            *permission_model.objects.filter(
                content_type__app_label="billing",
                codename__in=[f"{action}_operatorendpoint" for action in ADDED],
            )
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_reconciliation_alerts")]

    operations = [migrations.RunPython(grant, revoke)]
