"""Rollup folding: how usage records add up into hourly rollups (`UsageRollup`).

The one home of the folding rule, written once as SQL and used by both write paths:
`postgres` folds inside its one-statement batch insert, `orm` runs the same fold over
the records it has just inserted (on PostgreSQL or SQLite). The rule:
- a record counts in the rollup of (tenant, alias, accelerator, API key, provider
  account, upstream model, target route, UTC hour it started in), in the writer's shard
  (the ORM path always writes shard 0); a record without a provider account (or route)
  stamp counts under account (route) 0 (a sentinel rather than NULL, so the key is
  unique on SQLite too);
- a record without flags adds to `requests` and the `ROLLUP_SUMS` columns (what rating
  reads); a flagged record adds to `flagged_requests` and the `flagged_*` columns
  (`FLAGGED_SUMS`) only: rating holds it back, usage analytics and limits count it, so
  plain + flagged of a rollup equals a raw scan that ignores flags;
- `unanswered_requests` counts the records, flagged or not, whose status is one of
  `UNANSWERED_STATUSES` (the upstream answered with an error, or was not reached or
  timed out): they are also counted in `requests` or `flagged_requests`;
- `failed_over_requests` counts the attempts, flagged or not, that failed over to another
  target (`failed_over`; all are unanswered): client calls are requests + flagged -
  failed_over;
- `last_record_id` is the highest record id folded in, flagged or not;
- `changed_xid` is the commit-order stamp billing compares with a watermark to find late
  usage (`metering.selectors.usage_watermark`): on PostgreSQL the writing transaction's
  id, elsewhere (one writer at a time, ids commit in order) the highest record id.
Only records actually inserted are folded, so a replayed batch adds nothing.

Shards of closed hours fold into shard 0 (`usage_rollup_shards_fold`, a beat task):
readers then sum one row per rollup key and hour instead of up to 16. The fold moves usage between rows of one hour and adds none, so it keeps every sum,
the highest `last_record_id` and the highest `changed_xid` of the rows it merges: a
window rated before the fold never looks changed by it.
"""

# Every SQL text here is built from the constants of this module; no input reaches it.

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from metering.usage import LEDGER_COLUMNS

ROLLUP_SUMS = (*LEDGER_COLUMNS, "serving_cost_usd", "reasoning_cost_usd", "spend_usd")
# What flagged records add up to, each in a `flagged_<name>` column: every token class
# and the spend limits count.
FLAGGED_SUMS = (*LEDGER_COLUMNS, "spend_usd")
FLAGGED_COLUMNS = tuple(f"flagged_{name}" for name in FLAGGED_SUMS)
# The rollup row key, shard aside, in lock order.
ROLLUP_KEY = (
    "tenant_id",
    "alias",
    "accelerator",
    "api_key_id",
    "provider_account_id",
    "upstream_model",
    "route_id",
    "hour",
)
# The record columns the fold reads (the PostgreSQL batch returns these of the rows it
# inserted).
FOLDED_RECORD_COLUMNS = (
    "id",
    "tenant_id",
    "alias",
    "accelerator",
    "api_key_id",
    "provider_account_id",
    "upstream_model",
    "route_id",
    "started_at",
    "status",
    "flags",
    "failed_over",
    *ROLLUP_SUMS,
)
# Record statuses counted in `unanswered_requests` (UsageRecord.Status values): the
# upstream answered with an error, or it was not reached or did not answer in time.
UNANSWERED_STATUSES = ("upstream_error", "failed")
# Every column a fold adds up.
_ADDED = (
    "requests",
    "flagged_requests",
    "unanswered_requests",
    "failed_over_requests",
    *ROLLUP_SUMS,
    *FLAGGED_COLUMNS,
)


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


def _dialect(vendor: str) -> _Dialect:
    return _POSTGRES if vendor == "postgresql" else _SQLITE


def rollup_hourly_sql(*, source: str, vendor: str = "postgresql") -> str:
    """A SELECT of `source`'s records (`FOLDED_RECORD_COLUMNS`) summed per rollup row,
    in lock order."""
    d = _dialect(vendor)
    sums = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE {d.rated}), 0) AS {name}" for name in ROLLUP_SUMS
    )
    flagged = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE NOT {d.rated}), 0) AS flagged_{name}"
        for name in FLAGGED_SUMS
    )
    unanswered = ", ".join(f"'{status}'" for status in UNANSWERED_STATUSES)
    positions = ", ".join(str(i) for i in range(1, len(ROLLUP_KEY) + 1))
    return (
        "SELECT tenant_id, alias, accelerator, api_key_id,"  # noqa: S608
        " coalesce(provider_account_id, 0) AS provider_account_id, upstream_model,"
        f" coalesce(route_id, 0) AS route_id, {d.hour} AS hour,"
        f" count(*) FILTER (WHERE {d.rated}) AS requests,"
        f" count(*) FILTER (WHERE NOT {d.rated}) AS flagged_requests,"
        f" count(*) FILTER (WHERE status IN ({unanswered})) AS unanswered_requests,"
        f" count(*) FILTER (WHERE failed_over) AS failed_over_requests,"
        f" {sums}, {flagged}, max(id) AS last_id FROM {source}"
        f" GROUP BY {positions} ORDER BY {positions}"
    )


def rollup_upsert_sql(*, shard: str, vendor: str = "postgresql", refold: bool = False) -> str:
    """The INSERT that adds the rows of a CTE named `hourly` (`rollup_hourly_sql`) into
    the rollups of `shard` (an SQL expression). With `refold`, `hourly` holds existing
    rollup rows being merged (with their highest stamp as `stamp`), and the stamp they
    carry is kept instead of a new one."""
    d = _dialect(vendor)
    added = ", ".join(_ADDED)
    increments = ", ".join(f"{name} = r.{name} + excluded.{name}" for name in _ADDED)
    key = ", ".join(ROLLUP_KEY)
    stamp, stamp_update = (
        ("stamp", f"{d.greatest}(r.changed_xid, excluded.changed_xid)")
        if refold
        else (d.stamp, d.stamp_update)
    )
    return (
        f"INSERT INTO metering_usagerollup AS r ({key}, shard, {added},"  # noqa: S608
        " last_record_id, changed_xid, updated_at)"
        f" SELECT {key}, {shard}, {added}, last_id, {stamp}, {d.now} FROM hourly"
        # (WHERE true: SQLite's parser needs it before ON CONFLICT in an INSERT ... SELECT)
        f" WHERE true ON CONFLICT ({key}, shard) DO UPDATE SET {increments},"
        f" last_record_id = {d.greatest}(r.last_record_id, excluded.last_record_id),"
        f" changed_xid = {stamp_update}, updated_at = excluded.updated_at"
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


def _shards_fold_sql() -> str:
    """One batch of the shard fold (PostgreSQL): lock up to %(batch)s rollup rows of
    shards above 0 and hours before %(before)s in key order (the order writers lock
    theirs, so the two never deadlock), delete them, and add them into shard 0."""
    key = ", ".join(ROLLUP_KEY)
    sums = ", ".join(f"sum({name}) AS {name}" for name in _ADDED)
    return (
        "WITH picked AS (SELECT id FROM metering_usagerollup"  # noqa: S608
        " WHERE shard > 0 AND hour < %(before)s"
        f" ORDER BY {key}, shard LIMIT %(batch)s FOR UPDATE),"
        " moved AS (DELETE FROM metering_usagerollup m USING picked WHERE m.id = picked.id"
        " RETURNING m.*),"
        f" hourly AS (SELECT {key}, {sums}, max(last_record_id) AS last_id,"
        f" max(changed_xid) AS stamp FROM moved GROUP BY {key} ORDER BY {key}),"
        f" merged AS ({rollup_upsert_sql(shard='0', refold=True)} RETURNING 1)"
        " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM merged)"
    )


SHARDS_FOLD_SQL = _shards_fold_sql()


def usage_rollup_shards_fold(*, before: datetime, batch_size: int = 5000) -> int:
    """Fold the write shards of the rollup hours that start before `before` into shard 0,
    one statement (its own transaction) per batch; returns how many rows were merged
    away. Idempotent, and safe beside late writers: a record that arrives for a folded
    hour lands in its writer's shard again and is folded by the next run. On SQLite
    every writer folds into shard 0, so there is nothing to do."""
    if connection.vendor != "postgresql":
        return 0
    merged = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(SHARDS_FOLD_SQL, {"before": before, "batch": batch_size})
            (moved, _) = cursor.fetchone()
        merged += moved
        if moved < batch_size:
            return merged
