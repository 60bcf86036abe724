"""ApiKey.can_read_billing (the key's billing scope). Existing keys keep reading billing:
the column is added with a database default of true, which PostgreSQL 11+ records as
metadata (no table rewrite, no long lock)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0026_tenant_member_roles"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="can_read_billing",
            field=models.BooleanField(db_default=True, default=True),
        ),
    ]
