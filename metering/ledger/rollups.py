"""Rollup folding: how usage records add up into hourly rollups (`UsageRollup`).

The one home of the folding rule, written once as SQL and used by both write paths:
`postgres` folds inside its one-statement batch insert, `orm` runs the same fold over
the records it has just inserted (on PostgreSQL or SQLite). The rule:
- a record counts in the rollup of (tenant, alias, accelerator, UTC hour it started in),
  in the writer's shard (the ORM path always writes shard 0);
- only records without flags are summed (`requests` and the `ROLLUP_SUMS` columns); a
  flagged record adds to `flagged_requests` only (rating holds it back);
- `last_record_id` is the highest record id folded in, flagged or not;
- `changed_xid` is the commit-order stamp billing compares with a watermark to find late
  usage (`metering.selectors.usage_watermark`): on PostgreSQL the writing transaction's
  id, elsewhere (one writer at a time, ids commit in order) the highest record id.
Only records actually inserted are folded, so a replayed batch adds nothing.
"""

# Every SQL text here is built from the constants of this module; no input reaches it.

from dataclasses import dataclass

from django.db import connection

from metering.usage import LEDGER_COLUMNS

ROLLUP_SUMS = (*LEDGER_COLUMNS, "serving_cost_usd", "reasoning_cost_usd", "spend_usd")


@dataclass(frozen=True)
class _Dialect:
    hour: str  # the UTC hour a record started in
    rated: str  # the record carries no flags
    stamp: str  # changed_xid of a new rollup row
    stamp_update: str  # changed_xid of an existing row after the fold
    greatest: str
    now: str


# The commit-order stamp a rollup change carries on PostgreSQL: the 64-bit id of the
# writing transaction (see `metering.selectors.usage_watermark` for the invariant).
PG_CHANGE_STAMP = "pg_current_xact_id()::text::int8"

_POSTGRES = _Dialect(
    hour="date_trunc('hour', started_at, 'UTC')",
    rated="flags = '[]'::jsonb",
    stamp=PG_CHANGE_STAMP,
    stamp_update="excluded.changed_xid",
    greatest="greatest",
    now="now()",
)
# SQLite stores datetimes as UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]' (Django's format).
_SQLITE = _Dialect(
    hour="strftime('%Y-%m-%d %H:00:00', started_at)",
    rated="json_array_length(flags) = 0",
    stamp="last_id",
    stamp_update="max(r.changed_xid, excluded.changed_xid)",
    greatest="max",
    now="strftime('%Y-%m-%d %H:%M:%f', 'now')",
)


def rollup_hourly_sql(*, source: str, vendor: str = "postgresql") -> str:
    """A SELECT of `source`'s records (id, tenant_id, alias, accelerator, started_at,
    flags and the ROLLUP_SUMS columns) summed per rollup row, in lock order."""
    d = _POSTGRES if vendor == "postgresql" else _SQLITE
    sums = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE {d.rated}), 0) AS {name}" for name in ROLLUP_SUMS
    )
    return (
        f"SELECT tenant_id, alias, accelerator, {d.hour} AS hour,"  # noqa: S608
        f" count(*) FILTER (WHERE {d.rated}) AS requests,"
        f" count(*) FILTER (WHERE NOT {d.rated}) AS flagged_requests, {sums}, max(id) AS last_id"
        f" FROM {source} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )


def rollup_upsert_sql(*, shard: str, vendor: str = "postgresql") -> str:
    """The INSERT that adds the rows of a CTE named `hourly` (`rollup_hourly_sql`) into
    the rollups of `shard` (an SQL expression)."""
    d = _POSTGRES if vendor == "postgresql" else _SQLITE
    sum_names = ", ".join(ROLLUP_SUMS)
    increments = ", ".join(f"{name} = r.{name} + excluded.{name}" for name in ROLLUP_SUMS)
    return (
        "INSERT INTO metering_usagerollup AS r (tenant_id, alias, accelerator, hour, shard,"  # noqa: S608
        f" requests, flagged_requests, {sum_names}, last_record_id, changed_xid, updated_at)"
        f" SELECT tenant_id, alias, accelerator, hour, {shard}, requests, flagged_requests,"
        f" {sum_names}, last_id, {d.stamp}, {d.now} FROM hourly"
        # (WHERE true: SQLite's parser needs it before ON CONFLICT in an INSERT ... SELECT)
        " WHERE true ON CONFLICT (tenant_id, alias, accelerator, hour, shard) DO UPDATE SET"
        " requests = r.requests + excluded.requests,"
        f" flagged_requests = r.flagged_requests + excluded.flagged_requests, {increments},"
        f" last_record_id = {d.greatest}(r.last_record_id, excluded.last_record_id),"
        f" changed_xid = {d.stamp_update}, updated_at = excluded.updated_at"
    )


def usage_rollups_fold(record_ids: list[int]) -> None:
    """Fold the records just inserted in the current transaction (their ids) into the
    rollups of shard 0, on the connection's own database."""
    if not record_ids:
        return
    vendor = connection.vendor
    if vendor == "postgresql":
        fresh = "(SELECT * FROM metering_usagerecord WHERE id = ANY(%s)) AS fresh"
        ids: list[int] | str = record_ids
    else:
        fresh = "(SELECT * FROM metering_usagerecord WHERE id IN (SELECT value FROM json_each(%s)))"
        ids = "[" + ",".join(str(int(i)) for i in record_ids) + "]"
    sql = (
        f"WITH hourly AS ({rollup_hourly_sql(source=fresh, vendor=vendor)})"
        f" {rollup_upsert_sql(shard='0', vendor=vendor)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [ids])
