"""Rollups gain the target (`route_id`, 0 = none) in their row key and the
`failed_over_requests` sum (routing, decision 0117). Schema only, as 0018: existing rows
keep route 0 (their records carry no route stamp) and no failed-over attempts. Readers
that do not compare targets sum across route_id, as they do across accounts.

Online on PostgreSQL (not atomic): constant-default columns are a catalog change, the new
unique key is built CONCURRENTLY and swapped in one ALTER TABLE
(`metering.migration_ops`); every step is safe to repeat after an interruption.
"""

from django.db import migrations, models

from metering.migration_ops import AddFieldOnce, SwapUniqueKey

_KEY = ("tenant", "alias", "accelerator", "api_key", "provider_account_id", "upstream_model")
OLD_KEY = models.UniqueConstraint(fields=(*_KEY, "hour", "shard"), name="rollup_unique_hour")
NEW_KEY = models.UniqueConstraint(
    fields=(*_KEY, "route_id", "hour", "shard"), name="rollup_unique_hour"
)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY (PostgreSQL): see the module docstring

    dependencies = [
        ("metering", "0022_aliases"),
    ]

    operations = [
        AddFieldOnce(
            model_name="usagerollup",
            name="route_id",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        AddFieldOnce(
            model_name="usagerollup",
            name="failed_over_requests",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        SwapUniqueKey(model_name="usagerollup", old=OLD_KEY, new=NEW_KEY),
    ]
