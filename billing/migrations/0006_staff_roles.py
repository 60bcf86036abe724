"""The staff roles (operator, finance-read, finance-write) as Django groups holding exactly
their permissions. Idempotent: re-running sets the same permissions. When `ROLES` changes,
add a migration that runs `roles_sync` again."""

from django.db import migrations

from api.permissions import roles_sync


def sync(apps, schema_editor):  # type: ignore[no-untyped-def]
    roles_sync(apps, strict=False)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("metering", "0011_apikey_revoke_permission"),
        ("billing", "0005_staff_permissions"),
    ]

    operations = [migrations.RunPython(sync, migrations.RunPython.noop)]
