"""Usage records gain their nullable routing stamps (route, attempt, failed_over, policy,
reason, effort): a catalog change (nullable, no default: no rewrite of the partitioned
ledger; old records keep NULL), each column in its own short transaction under
lock_timeout (`AddFieldOnce`), so the ledger's writers never wait long behind it.

Rollups gain the target (`route_id`, 0 = none) in their row key and the
`failed_over_requests` sum (routing, decision 0117). Schema only, as 0018: existing rows
keep route 0 (their records carry no route stamp) and no failed-over attempts. Readers
that do not compare targets sum across route_id, as they do across accounts.

Online on PostgreSQL (not atomic): constant-default columns are a catalog change, the new
unique key is built CONCURRENTLY and swapped in one ALTER TABLE
(`metering.migration_ops`); every step is safe to repeat after an interruption.
"""

import django.db.models.deletion
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
            model_name="usagerecord",
            name="attempt",
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
        AddFieldOnce(
            model_name="usagerecord",
            name="failed_over",
            field=models.BooleanField(blank=True, null=True),
        ),
        AddFieldOnce(
            model_name="usagerecord",
            name="reasoning_effort",
            field=models.CharField(blank=True, max_length=16, null=True),
        ),
        AddFieldOnce(
            model_name="usagerecord",
            name="route",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="metering.route",
            ),
        ),
        AddFieldOnce(
            model_name="usagerecord",
            name="route_policy",
            field=models.CharField(blank=True, max_length=16, null=True),
        ),
        AddFieldOnce(
            model_name="usagerecord",
            name="route_reason",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
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
