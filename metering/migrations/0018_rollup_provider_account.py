"""Usage records carry the provider account stamp; rollups gain the provider account and
upstream model in their row key and the `unanswered_requests` sum (reconciliation,
decision 0116), and the rollups of every hour whose records are in the database are
rebuilt from them into shard 0 (folded).

What billing relies on is kept, as in 0014: a rebuilt row's `last_record_id` is the
highest record id it folds, and its `changed_xid` is the highest stamp of the old rows
of its (tenant, alias, accelerator, key, hour), so no rated window looks changed after
its rating (`metering.selectors.windows_with_usage_after`). The rebuild stops the
migration if the rebuilt rows do not add up to the old ones per (tenant, alias,
accelerator, key, hour).

Hours of months archived and dropped from the database (`LedgerArchive` state
"dropped") have no records to refold: their rows stay as they are, with provider
account 0, upstream model '' and no unanswered requests. Those hours cannot be
reconciled. Existing records carry no provider account stamp (it did not exist when
they were served), so every rebuilt row has account 0 too: reconciliation starts with
the records served after this migration.

The SQL is frozen here (the columns as of this migration), not built by
`metering.ledger.rollups`, which moves on with the model.
"""

from datetime import datetime

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
OLD_KEY = "tenant_id, alias, accelerator, api_key_id, hour"
UNANSWERED = "status IN ('upstream_error', 'failed')"
# Exact on both engines; SQLite sums decimals as floats, so money is compared on
# PostgreSQL only.
CHECKED = {
    "postgresql": (
        "requests",
        "flagged_requests",
        *TOKENS,
        *MONEY,
        *(f"flagged_{c}" for c in FLAGGED),
    )
}
CHECKED_SQLITE = ("requests", "flagged_requests", *TOKENS, *(f"flagged_{c}" for c in TOKENS))


def _month_after(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def _kept(apps, vendor: str) -> tuple[str, list[object]]:  # type: ignore[no-untyped-def]
    """An SQL condition on `hour` true for the rollups to rebuild (hours outside every
    dropped month), and its parameters."""
    archive = apps.get_model("metering", "LedgerArchive")
    months = sorted(archive.objects.filter(state="dropped").values_list("month", flat=True))
    if not months:
        return "true", []
    condition = " AND ".join("NOT (hour >= %s AND hour < %s)" for _ in months)
    params: list[object] = []
    for month in months:
        for bound in (month, _month_after(month)):
            # SQLite compares its stored UTC text 'YYYY-MM-DD HH:MM:SS'
            params.append(bound if vendor == "postgresql" else f"{bound:%Y-%m-%d %H:%M:%S}")
    return condition, params


def _rebuild_sql(vendor: str, kept: str) -> list[str]:
    if vendor == "postgresql":
        hour, rated, now = "date_trunc('hour', started_at, 'UTC')", "flags = '[]'::jsonb", "now()"
    else:
        hour, rated = "strftime('%Y-%m-%d %H:00:00', started_at)", "json_array_length(flags) = 0"
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    old_sums = ", ".join(
        f"sum({c}) AS {c}"
        for c in (
            "requests",
            "flagged_requests",
            *TOKENS,
            *MONEY,
            *(f"flagged_{c}" for c in FLAGGED),
        )
    )
    sums = ", ".join(f"coalesce(sum({c}) FILTER (WHERE {rated}), 0)" for c in (*TOKENS, *MONEY))
    flagged = ", ".join(f"coalesce(sum({c}) FILTER (WHERE NOT {rated}), 0)" for c in FLAGGED)
    columns = ", ".join((*TOKENS, *MONEY, *(f"flagged_{c}" for c in FLAGGED)))
    same = " AND ".join(
        f"b.{c} = metering_usagerollup.{c}"
        for c in ("tenant_id", "alias", "accelerator", "api_key_id", "hour")
    )
    return [
        "CREATE TEMP TABLE rollup_0018_before AS"  # noqa: S608 (constants and %s only)
        f" SELECT {OLD_KEY}, {old_sums}, max(changed_xid) AS stamp"
        f" FROM metering_usagerollup WHERE {kept} GROUP BY {OLD_KEY}",
        f"DELETE FROM metering_usagerollup WHERE {kept}",  # noqa: S608
        "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, api_key_id,"
        " provider_account_id, upstream_model, hour, shard, requests, flagged_requests,"
        f" unanswered_requests, {columns}, last_record_id, changed_xid, updated_at)"
        " SELECT tenant_id, alias, accelerator, api_key_id, coalesce(provider_account_id, 0),"
        f" upstream_model, {hour}, 0, count(*) FILTER (WHERE {rated}),"
        f" count(*) FILTER (WHERE NOT {rated}), count(*) FILTER (WHERE {UNANSWERED}),"
        f" {sums}, {flagged}, max(id), 0, {now} FROM metering_usagerecord"
        " GROUP BY 1, 2, 3, 4, 5, 6, 7",
        "UPDATE metering_usagerollup SET changed_xid = (SELECT b.stamp FROM"  # noqa: S608
        f" rollup_0018_before b WHERE {same}) WHERE changed_xid = 0 AND EXISTS"
        f" (SELECT 1 FROM rollup_0018_before b WHERE {same})",
    ]


def rebuild(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    vendor = schema_editor.connection.vendor
    checked = CHECKED.get(vendor, CHECKED_SQLITE)
    compared = ", ".join(f"coalesce({c}, 0)" for c in checked)
    regrouped = ", ".join(f"sum({c}) AS {c}" for c in checked)
    kept, params = _kept(apps, vendor)
    new = (
        f"(SELECT {OLD_KEY}, {regrouped} FROM metering_usagerollup"  # noqa: S608
        f" WHERE {kept} GROUP BY {OLD_KEY}) AS n"
    )
    with schema_editor.connection.cursor() as cursor:
        if vendor == "postgresql":
            # Check the tenant foreign keys of the rebuilt rows now: a deferred check left
            # pending would refuse the index this migration creates next.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for statement in _rebuild_sql(vendor, kept):
            cursor.execute(statement, params if "%s" in statement else None)
        # Both ways: an old group the records no longer explain, or records the old
        # rollups never held (their sums differ either way). Records of a dropped month
        # (none should exist) would show as gained.
        cursor.execute(
            f"SELECT count(*) FROM (SELECT {OLD_KEY}, {compared} FROM rollup_0018_before"  # noqa: S608
            f" EXCEPT SELECT {OLD_KEY}, {compared} FROM {new}) AS d",
            params or None,
        )
        (lost,) = cursor.fetchone()
        cursor.execute(
            f"SELECT count(*) FROM (SELECT {OLD_KEY}, {compared} FROM {new} EXCEPT"  # noqa: S608
            f" SELECT {OLD_KEY}, {compared} FROM rollup_0018_before) AS d",
            params or None,
        )
        (gained,) = cursor.fetchone()
        cursor.execute("DROP TABLE rollup_0018_before")
        if vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    if lost or gained:
        raise RuntimeError(
            f"rollups rebuilt from the usage records disagree with the old rollups in"
            f" {lost} old and {gained} new (tenant, alias, accelerator, key, hour) groups:"
            " reconcile them before migrating"
        )


class Migration(migrations.Migration):
    # The rebuild's DELETE and INSERT and the new unique constraint run in one
    # transaction with the schema change (PostgreSQL); writers wait for it.

    dependencies = [
        ("metering", "0016_provider_reports"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagerollup",
            name="rollup_unique_hour",
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="provider_account",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="metering.provideraccount",
            ),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="provider_account_id",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="unanswered_requests",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="upstream_model",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.RunPython(rebuild, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="usagerollup",
            index=models.Index(
                condition=models.Q(("provider_account_id__gt", 0)),
                fields=["provider_account_id", "hour"],
                name="rollup_account_hour",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                fields=(
                    "tenant",
                    "alias",
                    "accelerator",
                    "api_key",
                    "provider_account_id",
                    "upstream_model",
                    "hour",
                    "shard",
                ),
                name="rollup_unique_hour",
            ),
        ),
    ]
