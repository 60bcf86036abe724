"""Reads on the usage ledger: what billing, the REST API and spend control may know of
usage. Functions return querysets or plain data (frozen dataclasses, dicts, numbers).

Invariants:
- windows are half-open, [start, end), on the record's `started_at` (rollups: its UTC hour);
- rating reads the hourly rollups' plain sums (`usage_totals`, `usage_totals_by_tenant`),
  which hold unflagged records only: a flagged record is held back from rating, yet
  counts against limits (`spend_since`, `reasoning_tokens_since`) and in usage analytics
  (`usage_summary`, `usage_series`), which add the rollups' flagged sums;
- limits read the rollups alone, a tenant's and a key's alike (whole UTC hours from
  `since`), so months archived and dropped from the raw ledger still count;
- usage analytics equal a raw scan of the window (`usage_summary_raw`,
  `usage_series_raw`): whole UTC hours from the rollups, partial edge hours from the
  raw records; they count client calls, not attempts: an attempt that failed over to
  another target (decision 0117) is not a request (rollups: requests + flagged -
  failed_over); it has zero tokens, so every sum is the same either way;
- token classes carry the ledger's names (`metering.usage.LEDGER_COLUMNS`) except in
  `UsageTotals` and `ServedTotals`, which carry pricing's (`PRICING_CLASS`).
"""

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, F, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, Trunc
from django.utils import timezone

from config.compiled_sql import DATETIME_SLOT, CompiledQuery, int_slots, str_slots
from metering.calendar import month_day
from metering.ledger.archive_months import archived_months_dropped, months_read_lock
from metering.models import ApiKey, Route, ServingCostRate, UsageRecord, UsageRollup
from metering.usage import LEDGER_COLUMNS, PRICING_CLASS, TokenUsage

SHARE_QUANTUM = Decimal("0.000001")
GROUPINGS = {"alias": "alias", "api_key": "api_key_id", "day": "day"}


@dataclass(frozen=True)
class UsageFilter:
    tenant_id: uuid.UUID
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    api_key_id: int | None = None
    alias: str | None = None


def usage_records_for_tenant(*, filters: UsageFilter) -> QuerySet[UsageRecord]:
    qs = UsageRecord.objects.filter(tenant_id=filters.tenant_id)
    if filters.since is not None:
        qs = qs.filter(started_at__gte=filters.since)
    if filters.until is not None:
        qs = qs.filter(started_at__lt=filters.until)
    if filters.api_key_id is not None:
        qs = qs.filter(api_key_id=filters.api_key_id)
    if filters.alias:
        qs = qs.filter(alias=filters.alias)
    return qs


def _with_shares(row: dict[str, Any]) -> dict[str, Any]:
    usage = TokenUsage(**{column: row[column] for column in LEDGER_COLUMNS})
    output = usage.total_output_tokens
    row["total_tokens"] = usage.total_tokens
    # Hidden reasoning as a fraction of all output the tenant pays for (exact decimal string).
    row["reasoning_share_of_output"] = (
        None
        if output == 0
        else str((Decimal(usage.reasoning_tokens) / Decimal(output)).quantize(SHARE_QUANTUM))
    )
    return row


# Time buckets of usage series and summaries, truncated in UTC (settings.TIME_ZONE).
GRANULARITIES = ("hour", "day", "month")
_COUNTED = ("requests", *LEDGER_COLUMNS)
# A record that is a client call: every record but an attempt that failed over (its call
# is answered by a later attempt's record). NULL: recorded before routing.
_A_CALL = Q(failed_over__isnull=True) | Q(failed_over=False)


def _whole_hours(filters: UsageFilter) -> tuple[datetime | None, datetime | None] | None:
    """The whole UTC hours inside the window, [first, end) (None: unbounded), or None
    when the window holds no whole hour."""
    first = end = None
    if filters.since is not None:  # (UTC hours: an offset like +05:30 moves the floor)
        since = filters.since.astimezone(UTC)
        floor = since.replace(minute=0, second=0, microsecond=0)
        first = floor if floor == since else floor + timedelta(hours=1)
    if filters.until is not None:
        end = filters.until.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first is not None and end is not None and first >= end:
        return None
    return first, end


def _grouped(
    qs: QuerySet[Any],
    *,
    key: str | None,
    bucket: str | None,
    time_field: str,
    sums: dict[str, Any],
) -> list[dict[str, Any]]:
    """`sums` of `qs` per `key` (a column) and per `bucket` (a UTC granularity of
    `time_field`, as "bucket"); one row without either, even over no rows."""
    if key is None and bucket is None:
        return [qs.aggregate(**{name: Coalesce(total, 0) for name, total in sums.items()})]
    if bucket == "hour" and time_field == "hour":
        qs = qs.annotate(bucket=F("hour"))  # a rollup's hour is its own bucket
    elif bucket is not None:
        qs = qs.annotate(bucket=Trunc(time_field, bucket, tzinfo=UTC))
    names = [name for name in (key, "bucket" if bucket else None) if name]
    return list(qs.values(*names).annotate(**sums).order_by())


def _usage_rows(
    filters: UsageFilter, *, key: str | None, bucket: str | None, raw: bool
) -> list[dict[str, Any]]:
    """Requests (client calls: failed-over attempts left out) and tokens of every record
    in the window (flagged or not) per `key` and `bucket`. Whole hours come from the
    hourly rollups (plain + flagged sums), the partial hours at the window's edges from
    the raw records; `raw` reads everything from the raw records (the reference the
    rollup path must equal)."""
    hours = None if raw else _whole_hours(filters)
    raw_sums = {
        "requests": Count("id", filter=_A_CALL),
        **{name: Sum(name) for name in LEDGER_COLUMNS},
    }
    if hours is None:
        with _read_lock(filters.since, filters.until):
            records = usage_records_for_tenant(filters=filters)
            return _merged(
                _grouped(records, key=key, bucket=bucket, time_field="started_at", sums=raw_sums),
                _archived_rows(filters, filters.since, filters.until, key=key, bucket=bucket),
            )
    first, end = hours
    rollups = UsageRollup.objects.filter(tenant_id=filters.tenant_id)
    if first is not None:
        rollups = rollups.filter(hour__gte=first)
    if end is not None:
        rollups = rollups.filter(hour__lt=end)
    if filters.api_key_id is not None:
        rollups = rollups.filter(api_key_id=filters.api_key_id)
    if filters.alias:
        rollups = rollups.filter(alias=filters.alias)
    rows = _grouped(
        rollups,
        key=key,
        bucket=bucket,
        time_field="hour",
        sums={
            "requests": Sum(F("requests") + F("flagged_requests") - F("failed_over_requests")),
            **{name: Sum(F(name) + F(f"flagged_{name}")) for name in LEDGER_COLUMNS},
        },
    )
    # Each edge as its own time range (not the window with the whole hours cut out), so
    # PostgreSQL reads two short ranges of the (tenant, started_at) index; an edge hour
    # of a dropped month is read from its archive (its rollups stay, its records left).
    edges = Q()
    ranges: list[tuple[datetime | None, datetime | None]] = []
    if filters.since is not None and first is not None and filters.since < first:
        edges |= Q(started_at__gte=filters.since, started_at__lt=first)
        ranges.append((filters.since, first))
    if end is not None and (filters.until is None or end < filters.until):
        edges |= Q(started_at__gte=end) & (
            Q() if filters.until is None else Q(started_at__lt=filters.until)
        )
        ranges.append((end, filters.until))
    if edges:
        with _read_lock(filters.since, filters.until):
            records = usage_records_for_tenant(
                filters=replace(filters, since=None, until=None)
            ).filter(edges)
            edge_rows = _grouped(
                records, key=key, bucket=bucket, time_field="started_at", sums=raw_sums
            )
            for low, high in ranges:
                edge_rows += _archived_rows(filters, low, high, key=key, bucket=bucket)
        rows = _merged(rows, edge_rows)
    return rows


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _read_lock(since: datetime | None, until: datetime | None) -> Any:
    """`months_read_lock` over [since, until) (None: unbounded; no month after the next
    one can be archived)."""
    now = timezone.now()
    latest = month_day(now.year, now.month + 2)
    return months_read_lock(
        start=since or _EARLIEST, end=latest if until is None else min(until, latest)
    )


def _archived_rows(
    filters: UsageFilter,
    since: datetime | None,
    until: datetime | None,
    *,
    key: str | None,
    bucket: str | None,
) -> list[dict[str, Any]]:
    """The raw rows (as `_grouped` gives them) of the tenant's records in [since, until)
    that live in dropped months' archives; none when no month of it was dropped."""
    low = since or _EARLIEST
    high = until or datetime.max.replace(tzinfo=UTC)
    months = archived_months_dropped(start=low, end=high)
    if not months:
        return []
    # Imported here, not at the top: the archive loads pyarrow and boto3, which the
    # processes that never read a dropped month (the proxy) should not carry.
    from metering.ledger.archive import archived_usage_grouped

    rows: list[dict[str, Any]] = []
    for month in months:
        rows += archived_usage_grouped(
            month=month,
            tenant_id=filters.tenant_id,
            start=max(low, month),
            end=min(high, month_day(month.year, month.month + 1)),
            api_key_id=filters.api_key_id,
            alias=filters.alias,
            key=key,
            bucket=bucket,
        )
    return rows


def _merged(*parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same groups added up (token sums and requests; None reads as 0)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in (row for part in parts for row in part):
        group = tuple((k, v) for k, v in row.items() if k not in _COUNTED)
        into = merged.setdefault(group, dict(group) | dict.fromkeys(_COUNTED, 0))
        for name in _COUNTED:
            into[name] += row[name] or 0
    return list(merged.values())


def _usage_summary(
    filters: UsageFilter, group_by: str | None, *, raw: bool
) -> list[dict[str, Any]]:
    if group_by is None:
        return [_with_shares(_merged(_usage_rows(filters, key=None, bucket=None, raw=raw))[0])]
    key = GROUPINGS[group_by]
    if group_by == "day":
        rows = _usage_rows(filters, key=None, bucket="day", raw=raw)
        for r in rows:
            r["day"] = r.pop("bucket").date().isoformat()
    else:
        rows = _usage_rows(filters, key=key, bucket=None, raw=raw)
    if group_by == "api_key":
        prefixes = dict(
            ApiKey.objects.filter(pk__in=[r[key] for r in rows]).values_list("pk", "prefix")
        )
        for r in rows:
            r["api_key_prefix"] = prefixes.get(r[key], "")
    # Code-point order (Python's), not the database collation's: the same on every
    # backend and for rollups merged with raw edge hours (decision 0113, the API's order).
    rows.sort(key=lambda r: r[key])
    return [_with_shares(r) for r in rows]


def usage_summary(*, filters: UsageFilter, group_by: str | None = None) -> list[dict[str, Any]]:
    """Requests (client calls, not attempts) and token totals per class of every record
    in the window (flagged ones included), optionally grouped by alias, API key or UTC
    day, in ascending group order (aliases by code point). Served from the hourly rollups plus the raw records of the
    partial hours at the window's edges; equal to `usage_summary_raw`."""
    return _usage_summary(filters, group_by, raw=False)


def usage_summary_raw(*, filters: UsageFilter, group_by: str | None = None) -> list[dict[str, Any]]:
    """`usage_summary` by a scan of the raw records: the reference (tests, benchmark)."""
    return _usage_summary(filters, group_by, raw=True)


def _usage_series(
    filters: UsageFilter, granularity: str, group_by: str | None, *, raw: bool
) -> list[dict[str, Any]]:
    key = None if group_by is None else GROUPINGS[group_by]
    rows = _usage_rows(filters, key=key, bucket=granularity, raw=raw)
    for r in rows:
        r["start"] = r.pop("bucket")
    rows.sort(key=lambda r: (r["start"], r[key]) if key else r["start"])
    return [_with_shares(r) for r in rows]


def usage_series(
    *, filters: UsageFilter, granularity: str, group_by: str | None = None
) -> list[dict[str, Any]]:
    """Requests (client calls) and token totals of every record in the window per UTC
    bucket of `granularity` (hour, day or month; `start` is the bucket's first instant), optionally
    per alias or API key too, ordered by bucket then group. Buckets without usage are
    left out. Served like `usage_summary`; equal to `usage_series_raw`."""
    return _usage_series(filters, granularity, group_by, raw=False)


def usage_series_raw(
    *, filters: UsageFilter, granularity: str, group_by: str | None = None
) -> list[dict[str, Any]]:
    """`usage_series` by a scan of the raw records: the reference (tests, benchmark)."""
    return _usage_series(filters, granularity, group_by, raw=True)


@dataclass(frozen=True)
class UsageTotals:
    tokens: dict[tuple[str, str], int]  # (alias, pricing token class) -> tokens
    cutoff_record_id: int  # highest usage record id included (0: none, or not asked for)


NO_USAGE = UsageTotals({}, 0)


def usage_totals(
    *,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    up_to_record_id: int | None = None,
) -> UsageTotals:
    """One tenant's rated tokens per (alias, pricing token class) in [start, end), with
    the highest usage record id they include (see `usage_totals_by_tenant`)."""
    totals = _usage_totals(
        start=start, end=end, tenant_ids=[tenant_id], up_to_record_id=up_to_record_id
    )
    return totals.get(tenant_id, NO_USAGE)


def usage_totals_by_tenant(
    *,
    start: datetime,
    end: datetime,
    tenant_ids: Collection[uuid.UUID] | None = None,
    up_to_record_id: int | None = None,
    with_cutoff: bool = True,
) -> dict[uuid.UUID, UsageTotals]:
    """`usage_totals` of many tenants in one query: a `UsageTotals` per tenant of
    `tenant_ids` or (None) of every tenant; tenants without usage are absent (use
    `NO_USAGE`). `with_cutoff=False` skips the cut-off (`cutoff_record_id` 0) for a
    reader that resumes nothing from it."""
    return _usage_totals(
        start=start,
        end=end,
        tenant_ids=tenant_ids,
        up_to_record_id=up_to_record_id,
        with_cutoff=with_cutoff,
    )


def _usage_totals(
    *,
    start: datetime,
    end: datetime,
    tenant_ids: Collection[uuid.UUID] | None,
    up_to_record_id: int | None,
    with_cutoff: bool = True,
) -> dict[uuid.UUID, UsageTotals]:
    """Rated tokens per tenant and (alias, pricing token class) in [start, end), with the
    highest usage record id they include, in one query: the one reader of rated usage.

    Read from the hourly rollups (`start` and `end` must fall on whole UTC hours), or,
    with `up_to_record_id`, straight from the raw ledger: records started in
    [start, end), with id <= up_to_record_id, carrying no flags; the months of the window
    that were archived and dropped (`metering.ledger.archive`) are read from their
    archive. Rollups must agree with the raw ledger; invoices are re-computed from it."""
    if up_to_record_id is None:
        return _usage_totals_read(
            start=start,
            end=end,
            tenant_ids=tenant_ids,
            up_to_record_id=None,
            with_cutoff=with_cutoff,
        )
    # The database and the archives read as of one state of each month: a drop or a
    # restore committing between the two reads would count a month twice, or miss it.
    with months_read_lock(start=start, end=end):
        return _usage_totals_read(
            start=start,
            end=end,
            tenant_ids=tenant_ids,
            up_to_record_id=up_to_record_id,
            with_cutoff=with_cutoff,
        )


def _usage_totals_read(
    *,
    start: datetime,
    end: datetime,
    tenant_ids: Collection[uuid.UUID] | None,
    up_to_record_id: int | None,
    with_cutoff: bool,
) -> dict[uuid.UUID, UsageTotals]:
    if up_to_record_id is None:
        rows: QuerySet[Any] = UsageRollup.objects.filter(hour__gte=start, hour__lt=end)
        last = Max("last_record_id")
    else:
        rows = UsageRecord.objects.filter(
            started_at__gte=start, started_at__lt=end, id__lte=up_to_record_id, flags=[]
        )
        last = Max("id")
    if tenant_ids is not None:
        rows = rows.filter(tenant_id__in=tenant_ids)
    rows = (
        rows.values("tenant_id", "alias")
        .annotate(
            **({"last": last} if with_cutoff else {}),
            **{name: Sum(name) for name in LEDGER_COLUMNS},
        )
        .order_by()
    )
    found: list[dict[str, Any]] = list(rows)
    if up_to_record_id is not None:
        # Months archived and dropped from the database are read from their archive.
        months = archived_months_dropped(start=start, end=end)
        if months:
            from metering.ledger.archive import archived_usage_rows  # pyarrow: see above
        for month in months:
            found += archived_usage_rows(
                month=month,
                start=start,
                end=end,
                up_to_record_id=up_to_record_id,
                tenant_ids=None if tenant_ids is None else list(tenant_ids),
            )
        if not with_cutoff:
            for row in found:
                row.pop("last", None)
    grouped: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in found:
        grouped.setdefault(row["tenant_id"], []).append(row)
    return {tenant: _totals(tenant_rows) for tenant, tenant_rows in grouped.items()}


def _totals(rows: list[dict[str, Any]]) -> UsageTotals:
    tokens: dict[tuple[str, str], int] = {}
    cutoff = 0
    for row in rows:
        cutoff = max(cutoff, row.get("last") or 0)
        for name in LEDGER_COLUMNS:
            if row[name]:  # an alias may come from the database and an archive
                key = (row["alias"], PRICING_CLASS[name])
                tokens[key] = tokens.get(key, 0) + row[name]
    return UsageTotals(tokens, cutoff)


def usage_watermark() -> int:
    """A commit watermark W for the rollup reads that follow it: every rollup change
    stamped (`UsageRollup.changed_xid`) below W was committed before W was taken, so
    every later read sees it; a change stamped at or above W may not have been.

    Record ids are no such watermark: they are assigned at INSERT and commit out of order
    across writers (a batch holding id 100 may commit after one holding 101 and after a
    close that saw 101), so "ids above the cut-off" misses late usage. On PostgreSQL, W
    is the xmin of the current snapshot: every transaction with a lower id has ended,
    and every later snapshot's xmin is at least W. On SQLite writers run one at a time,
    ids commit in order, and W is one above the highest committed record id. Take W
    BEFORE reading the rollups a rating uses."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8")
        else:
            cursor.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {UsageRecord._meta.db_table}")  # noqa: S608
        (watermark,) = cursor.fetchone()
    return int(watermark)


@dataclass(frozen=True)
class BilledWindow:
    tenant_id: uuid.UUID
    start: datetime
    end: datetime
    billed_up_to: int  # highest record id already billed for this window
    watermark: int = 0  # commit watermark of its last rating (0: billed before watermarks)


def windows_with_usage_after(windows: list[BilledWindow]) -> set[tuple[uuid.UUID, datetime]]:
    """The (tenant, start) of every window whose rollups changed at or after the commit
    watermark of their last rating (or, for windows billed before watermarks, took in a
    record id above what was billed): usage that arrived after the window was invoiced.
    It may name a window whose change was already billed; re-rating it bills nothing."""
    if not windows:
        return set()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT w.tenant_id, w.start FROM unnest(%s::uuid[], %s::timestamptz[],"
                " %s::timestamptz[], %s::int8[], %s::int8[])"
                " AS w(tenant_id, start, stop, billed, watermark)"
                " WHERE EXISTS (SELECT 1 FROM metering_usagerollup r WHERE r.tenant_id = w.tenant_id"
                " AND r.hour >= w.start AND r.hour < w.stop AND (r.last_record_id > w.billed"
                " OR (w.watermark > 0 AND r.changed_xid >= w.watermark)))",
                [
                    [w.tenant_id for w in windows],
                    [w.start for w in windows],
                    [w.end for w in windows],
                    [w.billed_up_to for w in windows],
                    [w.watermark for w in windows],
                ],
            )
            return {(tenant_id, start) for tenant_id, start in cursor.fetchall()}
    late = set()
    for w in windows:
        changed = Q(last_record_id__gt=w.billed_up_to)
        if w.watermark > 0:
            changed |= Q(changed_xid__gte=w.watermark)
        rollups = UsageRollup.objects.filter(
            changed, tenant_id=w.tenant_id, hour__gte=w.start, hour__lt=w.end
        )
        if rollups.exists():
            late.add((w.tenant_id, w.start))
    return late


@dataclass(frozen=True)
class ServedTotals:
    tenant_id: uuid.UUID
    alias: str
    accelerator: str
    tokens: dict[str, int]  # pricing token class -> tokens
    serving_cost_usd: Decimal
    reasoning_cost_usd: Decimal
    # The target that served them (`UsageRollup.route_id`; 0: before routing).
    route_id: int = 0
    # The UTC day they were served on (midnight), when read `by_day`; else None.
    day: datetime | None = None


def served_totals(
    *,
    start: datetime,
    end: datetime,
    tenant_id: uuid.UUID | None = None,
    alias: str | None = None,
    by_day: bool = False,
) -> list[ServedTotals]:
    """Rated tokens and exact serving cost per (tenant, alias, accelerator, target) in
    [start, end), from the hourly rollups: what serving cost us (billing.reports: margins).

    Not `usage_totals`, the reader invoices are rated from: that one groups by alias
    only (a price never depends on the hardware), returns the cut-off record id a close
    resumes from, and can read the raw ledger for recomputation; this one splits by
    accelerator (each has its own cost rate), sums the serving costs the records were
    stamped with, and needs neither a cut-off nor the raw ledger.

    `by_day` splits each row further by UTC day (margins over time); summed over the
    days, the rows are exactly those read without it."""
    qs = UsageRollup.objects.filter(hour__gte=start, hour__lt=end)
    if tenant_id is not None:
        qs = qs.filter(tenant_id=tenant_id)
    if alias is not None:
        qs = qs.filter(alias=alias)
    keys = ["tenant_id", "alias", "accelerator", "route_id"]
    if by_day:
        qs = qs.annotate(day=Trunc("hour", "day", tzinfo=UTC))
        keys.append("day")
    rows = (
        qs.values(*keys)
        .annotate(
            cost=Sum("serving_cost_usd"),
            reasoning_cost=Sum("reasoning_cost_usd"),
            **{name: Sum(name) for name in LEDGER_COLUMNS},
        )
        .order_by(*keys)
    )
    return [
        ServedTotals(
            tenant_id=row["tenant_id"],
            alias=row["alias"],
            accelerator=row["accelerator"],
            tokens={PRICING_CLASS[name]: row[name] or 0 for name in LEDGER_COLUMNS},
            serving_cost_usd=row["cost"] or Decimal(0),
            reasoning_cost_usd=row["reasoning_cost"] or Decimal(0),
            route_id=row["route_id"],
            day=row.get("day"),
        )
        for row in rows
    ]


def rollups_fingerprint(*, start: datetime, end: datetime) -> tuple[int, int, int]:
    """(rows, highest record id, highest commit stamp) of the rollups of the hours
    [start, end): any write to those hours changes it (a new row; a record folded into a
    row raises its `last_record_id` and `changed_xid`), so a result computed from those
    rollups may be kept under it (billing.reports: a month's margins)."""
    found = UsageRollup.objects.filter(hour__gte=start, hour__lt=end).aggregate(
        rows=Count("pk"), last=Max("last_record_id"), xid=Max("changed_xid")
    )
    return (found["rows"], found["last"] or 0, found["xid"] or 0)


def _used_since(
    field: str, *, tenant_id: uuid.UUID, api_key_id: int | None, since: datetime | None
) -> Any:
    """The sum of `field` a tenant, or one of its keys, used from `since` (None: all time),
    flagged records included (held back from rating, not from limits: the proxy counts
    them too). One read for both: the hourly rollups (they carry the key), hours from
    `since` on, plain + flagged sums. Rollups outlive the raw records, so a month archived
    and dropped from the ledger still counts, and the read touches one row per (alias,
    accelerator, key, hour), not every record.

    Rollups hold whole UTC hours, so `since` must fall on one, as every caller's does (a
    calendar month's start; the end of the last invoiced billing period). Any other
    instant is a caller's bug and raises ValueError rather than silently counting part
    of an hour too much or too little."""
    rollups = UsageRollup.objects.filter(tenant_id=tenant_id)
    if api_key_id is not None:
        rollups = rollups.filter(api_key_id=api_key_id)
    if since is not None:
        if since.astimezone(UTC).replace(minute=0, second=0, microsecond=0) != since:
            raise ValueError(f"limits count whole UTC hours; {since.isoformat()} is not one")
        rollups = rollups.filter(hour__gte=since)
    return rollups.aggregate(total=Sum(F(field) + F(f"flagged_{field}")))["total"] or 0


def spend_since_by_tenant(*, since: datetime) -> dict[uuid.UUID, Decimal]:
    """`spend_since(tenant_id=t, since=since)` of every tenant with spend, in one read of
    the rollups (tenant-wide, flagged records included); `since` a whole UTC hour."""
    if since.astimezone(UTC).replace(minute=0, second=0, microsecond=0) != since:
        raise ValueError(f"limits count whole UTC hours; {since.isoformat()} is not one")
    rows = (
        UsageRollup.objects.filter(hour__gte=since)
        .values("tenant_id")
        .annotate(total=Sum(F("spend_usd") + F("flagged_spend_usd")))
    )
    return {row["tenant_id"]: Decimal(row["total"] or 0) for row in rows}


def spend_since(
    *, tenant_id: uuid.UUID, api_key_id: int | None = None, since: datetime | None = None
) -> Decimal:
    """Spend at list price (UsageRecord.spend_usd) of a tenant, or one of its keys, from
    `since` (a whole UTC hour; None: all time), flagged records included."""
    return Decimal(
        _used_since("spend_usd", tenant_id=tenant_id, api_key_id=api_key_id, since=since)
    )


def reasoning_tokens_since(
    *, tenant_id: uuid.UUID, api_key_id: int | None = None, since: datetime
) -> int:
    """Reasoning tokens a tenant, or one of its keys, spent from `since` (a whole UTC
    hour), flagged records included."""
    return int(
        _used_since("reasoning_tokens", tenant_id=tenant_id, api_key_id=api_key_id, since=since)
    )


def current_alias_cost_rates(
    aliases: Collection[str], at: datetime | None = None
) -> dict[str, ServingCostRate]:
    """The latest serving cost rate in force at `at` (default now) published for each alias,
    whatever its target (one query): for aliases deployed before any route serves them."""
    if not aliases:
        return {}
    rates: dict[str, ServingCostRate] = {}
    for rate in ServingCostRate.objects.filter(
        alias__in=list(aliases), effective_from__lte=at or timezone.now()
    ).order_by("alias", "-effective_from", "-id"):
        rates.setdefault(rate.alias, rate)
    return rates


def active_targets(aliases: Collection[str]) -> dict[int, tuple[str, str]]:
    """Route id -> (alias, target name) for the active targets of these aliases."""
    return {
        route.pk: (route.alias_id, route.name)
        for route in Route.objects.filter(alias__in=list(aliases), is_active=True)
        .order_by("alias", "priority", "name")
        .only("pk", "alias", "name")
    }


def current_cost_rates(
    route_ids: Collection[int],
    at: datetime | None = None,
    *,
    aliases: Mapping[int, str] | None = None,
    accelerators: Mapping[int, str] | None = None,
) -> dict[int, ServingCostRate]:
    """The serving cost rate in force at `at` (default now) for each target (route id): its
    own latest rate in force. A target with none takes its alias's latest route-less rate
    (published before routing) on the same accelerator (any, if the target names none), so
    a target added later on other hardware stays unpriced rather than inheriting a rate that
    is not its own; a target with no rate at all is absent. `aliases` and `accelerators`
    (route id -> alias name / accelerator), when the caller already holds the routes, save
    the query that reads them (the accelerators are read only if a route-less rate could
    apply)."""
    if not route_ids:
        return {}
    if aliases is None:
        routes = Route.objects.filter(pk__in=list(route_ids)).only("pk", "alias", "accelerator")
        aliases = {route.pk: route.alias_id for route in routes}
        accelerators = {route.pk: route.accelerator for route in routes}
    wanted_aliases = sorted({aliases[rid] for rid in route_ids if rid in aliases})
    rates: dict[int, ServingCostRate] = {}
    alias_wide: dict[str, list[ServingCostRate]] = {}  # newest first
    for rate in _cost_rate_candidates(list(route_ids), wanted_aliases, at or timezone.now()):
        if rate.route_id is not None:
            rates.setdefault(rate.route_id, rate)
        else:
            alias_wide.setdefault(rate.alias, []).append(rate)
    without = [rid for rid in route_ids if rid not in rates and aliases.get(rid, "") in alias_wide]
    if without and accelerators is None:
        accelerators = dict(Route.objects.filter(pk__in=without).values_list("pk", "accelerator"))
    for rid in without:
        accelerator = (accelerators or {}).get(rid, "")
        for rate in alias_wide[aliases[rid]]:
            if not accelerator or not rate.accelerator or rate.accelerator == accelerator:
                rates[rid] = rate
                break
    return rates


_RATE_FIELDS = tuple(field.attname for field in ServingCostRate._meta.concrete_fields)
# (route ids, aliases) counts -> the candidates query of that shape, compiled once: the
# caller cache reads a tenant's rates every few seconds, with the same shape each time.
_candidate_queries: dict[tuple[int, int], CompiledQuery] = {}


def _cost_rate_candidates(
    route_ids: list[int], aliases: list[str], at: datetime
) -> list[ServingCostRate]:
    """The rates of these targets and the route-less rates of these aliases in force at
    `at`, newest first."""
    shape = (len(route_ids), len(aliases))
    query = _candidate_queries.get(shape)
    if query is None:
        if len(_candidate_queries) >= 256:
            _candidate_queries.clear()
        query = _candidate_queries[shape] = CompiledQuery(
            lambda *args: (
                ServingCostRate.objects.filter(
                    Q(route_id__in=args[: shape[0]])
                    | Q(route__isnull=True, alias__in=args[shape[0] : -1]),
                    effective_from__lte=args[-1],
                )
                .order_by("-effective_from", "-id")
                .values_list(*_RATE_FIELDS)
            ),
            *int_slots(shape[0]),
            *str_slots(shape[1]),
            DATETIME_SLOT,
        )
    using = query.db()
    return [
        ServingCostRate.from_db(using, _RATE_FIELDS, row)
        for row in query.rows(*route_ids, *aliases, at)
    ]
