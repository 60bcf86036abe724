"""Rollups gain the API key in their row key and the flagged records' sums, and every
existing rollup is rebuilt from the raw records into shard 0 (folded).

What billing relies on is kept: a rebuilt row's `last_record_id` is the highest record
id it folds, and its `changed_xid` is the highest stamp of the old rows of its
(tenant, alias, accelerator, hour), so no rated window looks changed after its rating
(`metering.selectors.windows_with_usage_after`). The rebuild stops the migration if the
rebuilt rows do not add up to the old ones per (tenant, alias, accelerator, hour).

The SQL is frozen here (the columns as of this migration), not built by
`metering.ledger.rollups`, which moves on with the model.
"""

import django.db.models.deletion
from django.db import migrations, models

TOKENS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
MONEY = ("serving_cost_usd", "reasoning_cost_usd", "spend_usd")
FLAGGED = (*TOKENS, "spend_usd")
OLD_KEY = "tenant_id, alias, accelerator, hour"
# Exact on both engines; SQLite sums decimals as floats, so money is compared on
# PostgreSQL only.
CHECKED = {"postgresql": ("requests", "flagged_requests", *TOKENS, *MONEY)}
CHECKED_SQLITE = ("requests", "flagged_requests", *TOKENS)


def _rebuild_sql(vendor: str) -> list[str]:
    if vendor == "postgresql":
        hour, rated, now = "date_trunc('hour', started_at, 'UTC')", "flags = '[]'::jsonb", "now()"
    else:
        hour, rated = "strftime('%Y-%m-%d %H:00:00', started_at)", "json_array_length(flags) = 0"
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    old_sums = ", ".join(
        f"sum({c}) AS {c}" for c in ("requests", "flagged_requests", *TOKENS, *MONEY)
    )
    sums = ", ".join(f"coalesce(sum({c}) FILTER (WHERE {rated}), 0)" for c in (*TOKENS, *MONEY))
    flagged = ", ".join(f"coalesce(sum({c}) FILTER (WHERE NOT {rated}), 0)" for c in FLAGGED)
    columns = ", ".join((*TOKENS, *MONEY, *(f"flagged_{c}" for c in FLAGGED)))
    return [
        "CREATE TEMP TABLE rollup_0014_before AS"
        f" SELECT {OLD_KEY}, {old_sums}, max(changed_xid) AS stamp"
        f" FROM metering_usagerollup GROUP BY {OLD_KEY}",
        "DELETE FROM metering_usagerollup",
        "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id, hour,"
        f" shard, requests, flagged_requests, {columns}, last_record_id, changed_xid,"
        f" updated_at) SELECT tenant_id, alias, accelerator, api_key_id, {hour}, 0,"
        f" count(*) FILTER (WHERE {rated}), count(*) FILTER (WHERE NOT {rated}), {sums},"
        f" {flagged}, max(id), 0, {now} FROM metering_usagerecord GROUP BY 1, 2, 3, 4, 5",
        "UPDATE metering_usagerollup SET changed_xid = (SELECT b.stamp FROM"
        " rollup_0014_before b WHERE b.tenant_id = metering_usagerollup.tenant_id AND"
        " b.alias = metering_usagerollup.alias AND b.accelerator ="
        " metering_usagerollup.accelerator AND b.hour = metering_usagerollup.hour)"
        " WHERE EXISTS (SELECT 1 FROM rollup_0014_before b WHERE b.tenant_id ="
        " metering_usagerollup.tenant_id AND b.alias = metering_usagerollup.alias AND"
        " b.accelerator = metering_usagerollup.accelerator AND b.hour ="
        " metering_usagerollup.hour)",
    ]


def rebuild(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    vendor = schema_editor.connection.vendor
    checked = CHECKED.get(vendor, CHECKED_SQLITE)
    compared = ", ".join(f"coalesce({c}, 0)" for c in checked)
    regrouped = ", ".join(f"sum({c}) AS {c}" for c in checked)
    with schema_editor.connection.cursor() as cursor:
        if vendor == "postgresql":
            # Check the tenant foreign keys of the rebuilt rows now: a deferred check left
            # pending would refuse the index this migration creates next.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for statement in _rebuild_sql(vendor):
            cursor.execute(statement)
        # Both ways: an old group the records no longer explain, or records the old
        # rollups never held (their sums differ either way).
        cursor.execute(
            f"SELECT count(*) FROM (SELECT {OLD_KEY}, {compared} FROM rollup_0014_before"
            f" EXCEPT SELECT {OLD_KEY}, {compared} FROM (SELECT {OLD_KEY}, {regrouped}"
            f" FROM metering_usagerollup GROUP BY {OLD_KEY}) AS n) AS d"
        )
        (lost,) = cursor.fetchone()
        cursor.execute(
            f"SELECT count(*) FROM (SELECT {OLD_KEY}, {compared} FROM (SELECT {OLD_KEY},"
            f" {regrouped} FROM metering_usagerollup GROUP BY {OLD_KEY}) AS n EXCEPT"
            f" SELECT {OLD_KEY}, {compared} FROM rollup_0014_before) AS d"
        )
        (gained,) = cursor.fetchone()
        cursor.execute("DROP TABLE rollup_0014_before")
        if vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    if lost or gained:
        raise RuntimeError(
            f"rollups rebuilt from the usage records disagree with the old rollups in"
            f" {lost} old and {gained} new (tenant, alias, accelerator, hour) groups:"
            " reconcile them before migrating"
        )


class Migration(migrations.Migration):
    # The rebuild's DELETE and INSERT and the new unique constraint run in one
    # transaction with the schema change (PostgreSQL); writers wait for it.

    dependencies = [
        ("metering", "0013_ledger_partitions"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagerollup",
            name="rollup_unique_hour",
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="api_key",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                default=0,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="metering.apikey",
            ),
            preserve_default=False,
        ),
        *(
            migrations.AddField(
                model_name="usagerollup",
                name=f"flagged_{name}",
                field=models.BigIntegerField(db_default=0, default=0),
            )
            for name in TOKENS
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="flagged_spend_usd",
            field=models.DecimalField(db_default=0, decimal_places=24, default=0, max_digits=44),
        ),
        migrations.RunPython(rebuild, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="usagerollup",
            index=models.Index(
                condition=models.Q(("shard__gt", 0)), fields=["hour"], name="rollup_unfolded"
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                fields=("tenant", "alias", "accelerator", "api_key", "hour", "shard"),
                name="rollup_unique_hour",
            ),
        ),
    ]
