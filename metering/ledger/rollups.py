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

Per-target statistics (decision 0117) fold from the same inserted records, in the same
statement, for records with a `route_id` only: `RouteTargetHour` per (route_id, UTC hour,
reasoning effort ("" for none or not known), shard) counts attempts, answered (completed
or incomplete), failed over, upstream 5xx and 429, failed and incomplete, and sums the
token classes, serving cost, spend (NULL adds 0) and latency; `RouteLatencyBucket` counts
latency and TTFT (when known) per bucket of `LATENCY_BUCKET_EDGES_US`.

Shards of closed hours fold into shard 0 (`usage_rollup_shards_fold`, a beat task):
readers then sum one row per rollup key and hour instead of up to 16. The fold moves usage between rows of one hour and adds none, so it keeps every sum,
the highest `last_record_id` and the highest `changed_xid` of the rows it merges: a
window rated before the fold never looks changed by it.
"""

# Every SQL text here is built from the constants of this module; no input reaches it.

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from metering.models import LATENCY_BUCKET_EDGES_US
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
# The record columns the folds read as they are; `folded_record_sql` adds what they
# derive from the record (`hour`, `rated`).
FOLDED_RECORD_COLUMNS = (
    "id",
    "tenant_id",
    "alias",
    "accelerator",
    "api_key_id",
    "provider_account_id",
    "upstream_model",
    "route_id",
    "status",
    "failed_over",
    *ROLLUP_SUMS,
    # read by the per-target fold only
    "upstream_status",
    "reasoning_effort",
    "latency_us",
    "ttft_us",
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


def folded_record_sql(vendor: str = "postgresql") -> str:
    """The select list of a record as the folds read it: `FOLDED_RECORD_COLUMNS`, its UTC
    `hour` and whether it is `rated` (no flags), each derived once per record (the
    PostgreSQL batch returns this of the rows it inserted)."""
    d = _dialect(vendor)
    return f"{', '.join(FOLDED_RECORD_COLUMNS)}, {d.hour} AS hour, {d.rated} AS rated"


def rollup_hourly_sql(*, source: str) -> str:
    """A SELECT of `source`'s records (`folded_record_sql`) summed per rollup row, in
    lock order (both dialects)."""
    sums = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE rated), 0) AS {name}" for name in ROLLUP_SUMS
    )
    flagged = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE NOT rated), 0) AS flagged_{name}"
        for name in FLAGGED_SUMS
    )
    unanswered = ", ".join(f"'{status}'" for status in UNANSWERED_STATUSES)
    positions = ", ".join(str(i) for i in range(1, len(ROLLUP_KEY) + 1))
    return (
        "SELECT tenant_id, alias, accelerator, api_key_id,"  # noqa: S608
        " coalesce(provider_account_id, 0) AS provider_account_id, upstream_model,"
        " coalesce(route_id, 0) AS route_id, hour,"
        " count(*) FILTER (WHERE rated) AS requests,"
        " count(*) FILTER (WHERE NOT rated) AS flagged_requests,"
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
    rollups and the per-target tables of shard 0, on the connection's own database."""
    if not record_ids:
        return
    vendor = connection.vendor
    folded = folded_record_sql(vendor)
    if vendor == "postgresql":
        fresh = f"SELECT {folded} FROM metering_usagerecord WHERE id = ANY(%s)"  # noqa: S608
        ids: list[int] | str = record_ids
    else:
        fresh = (
            f"SELECT {folded} FROM metering_usagerecord"  # noqa: S608
            " WHERE id IN (SELECT value FROM json_each(%s))"
        )
        ids = "[" + ",".join(str(int(i)) for i in record_ids) + "]"
    # SQLite runs one data-modifying statement at a time: one per table.
    statements = (
        f"WITH hourly AS ({rollup_hourly_sql(source=f'({fresh}) AS fresh')})"
        f" {rollup_upsert_sql(shard='0', vendor=vendor)}",
        f"WITH fresh AS ({fresh}),"
        f" targets AS ({target_hourly_sql(source='fresh')})"
        f" {target_upsert_sql(source='targets', shard='0', vendor=vendor)}",
        f"WITH fresh AS ({fresh}),"
        f" buckets AS ({bucket_counts_sql(source='fresh', vendor=vendor)})"
        f" {bucket_upsert_sql(source='buckets', shard='0')}",
    )
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql, [ids])


# --- per-target statistics (decision 0117) ----------------------------------------------

# RouteTargetHour's key, shard aside, in lock order.
TARGET_HOUR_KEY = ("route_id", "hour", "reasoning_effort")
# Record statuses of an answered attempt (UsageRecord.Status values).
ANSWERED_STATUSES = ("completed", "incomplete")
TARGET_SUMS = (*LEDGER_COLUMNS, "serving_cost_usd", "spend_usd")
# Every column the per-target fold adds up (RouteTargetHour).
TARGET_ADDED = (
    "attempts",
    "answered",
    "failed_over",
    "status_5xx",
    "status_429",
    "failed",
    "incomplete",
    *TARGET_SUMS,
    "latency_us_sum",
)
# RouteLatencyBucket's key, shard aside, in lock order.
BUCKET_KEY = ("route_id", "hour", "reasoning_effort", "kind", "bucket")


def latency_bucket_sql(column: str, vendor: str = "postgresql") -> str:
    """The histogram bucket of `column` (microseconds): bucket i holds values below
    LATENCY_BUCKET_EDGES_US[i] and at or above the edge before it; bucket len(edges)
    everything at or above the last edge. PostgreSQL: `width_bucket` over the edges (a
    binary search: the number of edges at or below the value); SQLite: a CASE."""
    if vendor == "postgresql":
        edges = ",".join(str(edge) for edge in LATENCY_BUCKET_EDGES_US)
        return f"width_bucket({column}, '{{{edges}}}'::int8[])"
    whens = " ".join(
        f"WHEN {column} < {edge} THEN {i}" for i, edge in enumerate(LATENCY_BUCKET_EDGES_US)
    )
    return f"CASE {whens} ELSE {len(LATENCY_BUCKET_EDGES_US)} END"


def latency_bucket_of(value_us: int) -> int:
    """The bucket `latency_bucket_sql` puts `value_us` in (for readers and tests)."""
    for i, edge in enumerate(LATENCY_BUCKET_EDGES_US):
        if value_us < edge:
            return i
    return len(LATENCY_BUCKET_EDGES_US)


def target_hourly_sql(*, source: str) -> str:
    """A SELECT of `source`'s records (`folded_record_sql`) with a route id, summed per
    RouteTargetHour row, in lock order (both dialects)."""
    answered = ", ".join(f"'{status}'" for status in ANSWERED_STATUSES)
    sums = ", ".join(f"coalesce(sum({name}), 0) AS {name}" for name in TARGET_SUMS)
    return (
        "SELECT route_id, hour, effort AS reasoning_effort, count(*) AS attempts,"  # noqa: S608
        f" count(*) FILTER (WHERE status IN ({answered})) AS answered,"
        " count(*) FILTER (WHERE failed_over) AS failed_over,"
        " count(*) FILTER (WHERE upstream_status >= 500) AS status_5xx,"
        " count(*) FILTER (WHERE upstream_status = 429) AS status_429,"
        " count(*) FILTER (WHERE status = 'failed') AS failed,"
        " count(*) FILTER (WHERE status = 'incomplete') AS incomplete,"
        f" {sums}, coalesce(sum(latency_us), 0) AS latency_us_sum"
        " FROM (SELECT *, coalesce(reasoning_effort, '') AS effort"
        f" FROM {source} WHERE route_id IS NOT NULL) AS t"
        " GROUP BY route_id, hour, effort ORDER BY route_id, hour, effort"
    )


def bucket_counts_sql(*, source: str, vendor: str = "postgresql") -> str:
    """A SELECT of `source`'s records (`folded_record_sql`) with a route id, counted per
    RouteLatencyBucket row (latency always, TTFT when known), in lock order."""
    keyed = "route_id, hour, coalesce(reasoning_effort, '') AS reasoning_effort"
    latency, ttft = latency_bucket_sql("latency_us", vendor), latency_bucket_sql("ttft_us", vendor)
    return (
        "SELECT route_id, hour, reasoning_effort, kind, bucket, count(*) AS count"  # noqa: S608
        f" FROM (SELECT {keyed}, 'latency' AS kind, {latency} AS bucket"
        f" FROM {source} WHERE route_id IS NOT NULL"
        f" UNION ALL SELECT {keyed}, 'ttft' AS kind, {ttft} AS bucket"
        f" FROM {source} WHERE route_id IS NOT NULL AND ttft_us IS NOT NULL) AS b"
        " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    )


def target_upsert_sql(*, source: str, shard: str, vendor: str = "postgresql") -> str:
    """The INSERT that adds the rows of the CTE `source` (`target_hourly_sql`) into the
    RouteTargetHour rows of `shard` (an SQL expression)."""
    d = _dialect(vendor)
    key, added = ", ".join(TARGET_HOUR_KEY), ", ".join(TARGET_ADDED)
    increments = ", ".join(f"{name} = r.{name} + excluded.{name}" for name in TARGET_ADDED)
    return (
        f"INSERT INTO metering_routetargethour AS r ({key}, shard, {added}, updated_at)"  # noqa: S608
        f" SELECT {key}, {shard}, {added}, {d.now} FROM {source}"
        f" WHERE true ON CONFLICT ({key}, shard) DO UPDATE SET {increments},"
        " updated_at = excluded.updated_at"
    )


def bucket_upsert_sql(*, source: str, shard: str) -> str:
    """The INSERT that adds the rows of the CTE `source` (`bucket_counts_sql`) into the
    RouteLatencyBucket rows of `shard` (both dialects)."""
    key = ", ".join(BUCKET_KEY)
    return (
        f"INSERT INTO metering_routelatencybucket AS r ({key}, shard, count)"  # noqa: S608
        f" SELECT {key}, {shard}, count FROM {source}"
        f" WHERE true ON CONFLICT ({key}, shard) DO UPDATE SET count = r.count + excluded.count"
    )


def target_fold_ctes(*, source: str, shard: str, vendor: str = "postgresql") -> str:
    """The CTEs that fold `source`'s records into the per-target tables (PostgreSQL's
    batch statement: `, ` + this after its other CTEs)."""
    return (
        f"targets AS ({target_hourly_sql(source=source)}),"
        f" targeted AS ({target_upsert_sql(source='targets', shard=shard, vendor=vendor)}),"
        f" buckets AS ({bucket_counts_sql(source=source, vendor=vendor)}),"
        f" bucketed AS ({bucket_upsert_sql(source='buckets', shard=shard)})"
    )


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


def _table_shards_fold_sql(table: str, key: tuple[str, ...], added: tuple[str, ...]) -> str:
    """`_shards_fold_sql` for a per-target table (`table`, its `key` and the columns it
    adds up): the same lock order, one table per statement."""
    keys = ", ".join(key)
    sums = ", ".join(f"sum({name}) AS {name}" for name in added)
    if table == "metering_routetargethour":
        upsert = target_upsert_sql(source="hourly", shard="0")
    else:
        upsert = bucket_upsert_sql(source="hourly", shard="0")
    return (
        f"WITH picked AS (SELECT id FROM {table}"  # noqa: S608
        " WHERE shard > 0 AND hour < %(before)s"
        f" ORDER BY {keys}, shard LIMIT %(batch)s FOR UPDATE),"
        f" moved AS (DELETE FROM {table} m USING picked WHERE m.id = picked.id"
        " RETURNING m.*),"
        f" hourly AS (SELECT {keys}, {sums} FROM moved GROUP BY {keys} ORDER BY {keys}),"
        f" merged AS ({upsert} RETURNING 1)"
        " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM merged)"
    )


TARGET_SHARDS_FOLD_SQL = _table_shards_fold_sql(
    "metering_routetargethour", TARGET_HOUR_KEY, TARGET_ADDED
)
BUCKET_SHARDS_FOLD_SQL = _table_shards_fold_sql(
    "metering_routelatencybucket", BUCKET_KEY, ("count",)
)


def usage_rollup_shards_fold(*, before: datetime, batch_size: int = 5000) -> int:
    """Fold the write shards of the rollup hours that start before `before` into shard 0,
    one statement (its own transaction) per batch; returns how many rollup rows were
    merged away. The per-target tables (RouteTargetHour, RouteLatencyBucket) fold the
    same way after the rollups, one table per statement (so no statement holds locks in
    two tables), and `route_shards_fold` counts theirs. Idempotent, and safe beside late
    writers: a record that arrives for a folded hour lands in its writer's shard again
    and is folded by the next run. On SQLite every writer folds into shard 0, so there
    is nothing to do."""
    if connection.vendor != "postgresql":
        return 0
    merged = _fold_batches(SHARDS_FOLD_SQL, before, batch_size)
    route_shards_fold(before=before, batch_size=batch_size)
    return merged


def route_shards_fold(*, before: datetime, batch_size: int = 5000) -> tuple[int, int]:
    """Fold the write shards of RouteTargetHour and RouteLatencyBucket hours that start
    before `before` into shard 0; returns the rows merged away in each."""
    if connection.vendor != "postgresql":
        return 0, 0
    return (
        _fold_batches(TARGET_SHARDS_FOLD_SQL, before, batch_size),
        _fold_batches(BUCKET_SHARDS_FOLD_SQL, before, batch_size),
    )


def _fold_batches(sql: str, before: datetime, batch_size: int) -> int:
    merged = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, {"before": before, "batch": batch_size})
            (moved, _) = cursor.fetchone()
        merged += moved
        if moved < batch_size:
            return merged
