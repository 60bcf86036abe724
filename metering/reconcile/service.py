"""Reconciliation rows: what the ledger forwarded against what the provider reports, per
account x UTC day x upstream model (x the provider's key id) x token class (decision 0116).

Our side comes from rollups (`metering.reconcile.ours.forwarded_usage`), never from raw
records; the report's side from the imported usage buckets. The pure comparison is
`metering.reconcile.compare`.

Invariants:
- Groups. Ours are keyed by the upstream model the records were served with and, through
  the account's *current* routes, by the key id the alias's route declares
  (`Route.upstream_key_id`); theirs by the report's model, mapped through
  `ProviderAccount.model_map`, and the report's `api_key_id`. A (day, model) is compared
  per key only when every alias that served it declares a key id, every current route of
  the account on that model does, and the report is grouped by key; otherwise it is
  compared summed over keys (`api_key_id` ''). In per-key mode a key id no route declares
  has no usage of ours: its rows are `missing_in_ledger` (a leaked key or a bypass).
  A route moved to another key takes its history with it: routes are read as they are now.
- Buckets. A day is read at one bucket width, the finest the import stored for it, so a
  window imported at 1h and again at 1d is never counted twice.
- Settling. A day is `pending` until RECKON_PROVIDER_REPORT_SETTLE_DAYS whole days after
  its end, the window over which the import re-reads the report
  (`metering.providers.importer.provider_import_window`).
- Writes are idempotent. Rows are upserted on their key (account, day, model, key,
  class) under a lock on the account; a row whose values did not change is not written;
  a row of the days recomputed that no longer has ours or theirs (the report dropped a
  group, a route's key changed) is deleted, since rows are derived data recomputed in
  place and the report's history is kept in `ProviderBucketRevision`. After the commit,
  `hooks.rows_changed` gets exactly the days whose rows were created, changed or
  deleted, so a recompute that changes nothing tells billing nothing.
- Errors, disconnects, cut streams (counted by the rollups, `ForwardedRow`): upstream
  errors and failures are not requests of ours (they were not answered), their recorded
  tokens, usually 0, count; a client disconnect counts in full (the proxy drained the
  upstream); a cut stream counts the usage seen up to the cut, so the provider may report
  more. Rows that do not match carry `explain`: the counts and tokens of the group's
  incomplete, client-disconnected, failed and upstream-error records, read from the raw
  ledger while the day's month is in the database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum

from metering.models import (
    LedgerArchive,
    ProviderAccount,
    ProviderUsageBucket,
    ReconciliationRow,
    Route,
    UsageRecord,
)
from metering.reconcile.compare import (
    Comparison,
    Ours,
    Provider,
    Status,
    Theirs,
    Tolerance,
    compare_group,
)
from metering.reconcile.hooks import rows_changed
from metering.reconcile.ours import ForwardedRow, forwarded_usage

# (day, upstream model, the provider's key id or '' summed over keys)
GroupKey = tuple[dt.date, str, str]

# Bucket widths from finest to coarsest: a day is read at the finest one it has.
_WIDTHS = ("1m", "1h", "1d")

# The record kinds `explain` counts: three statuses and the client-disconnected flag (a
# record may be two kinds: a drain cut by its timeout is incomplete and disconnected).
EXPLAIN_KINDS = ("incomplete", "client_disconnected", "failed", "upstream_error")
_EXPLAIN_TOKENS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
# Rows with these statuses on a settled day need no explanation.
_NOTHING_TO_EXPLAIN = frozenset({Status.MATCHED, Status.NOT_COMPARED})
# The fields of a row that a recompute may change (besides `computed_at`).
_VALUE_FIELDS = (
    "ours",
    "theirs",
    "drift",
    "relative_drift",
    "status",
    "reasoning",
    "drift_equals_reasoning",
    "explain",
    "report_revision",
)


@dataclass(frozen=True)
class ReconcileResult:
    account_id: int
    days: tuple[dt.date, ...]
    created: int
    updated: int
    deleted: int
    unchanged: int
    # The days whose rows were created, changed or deleted (told to billing).
    changed_days: tuple[dt.date, ...]


@dataclass
class _Reported:
    theirs: Theirs = field(default_factory=Theirs)
    revision: int = 0


def tolerance_from_settings() -> Tolerance:
    return Tolerance(
        tokens=settings.RECKON_RECON_TOLERANCE_TOKENS,
        relative=settings.RECKON_RECON_TOLERANCE_RELATIVE,
    )


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def day_settled(*, day: dt.date, now: dt.datetime) -> bool:
    """Whether the report of `day` no longer settles: SETTLE_DAYS whole days after its end."""
    settle = dt.timedelta(days=1 + settings.RECKON_PROVIDER_REPORT_SETTLE_DAYS)
    return now >= day_start(day) + settle


def day_runs(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """The days as half-open [start, end) runs of consecutive days."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + dt.timedelta(days=1))
        else:
            runs.append((day, day + dt.timedelta(days=1)))
    return runs


def reconcile_account_days(
    *, account: ProviderAccount, days: Iterable[dt.date], now: dt.datetime
) -> ReconcileResult:
    """Recompute the reconciliation rows of `account` for `days` (UTC) as of `now`."""
    wanted = sorted(set(days))
    forwarded: list[ForwardedRow] = []
    for start, end in day_runs(wanted):
        forwarded.extend(forwarded_usage(account_id=account.pk, start=start, end=end))
    routes = list(Route.objects.filter(provider_account=account))
    computed = rows_compute(
        account=account,
        days=wanted,
        forwarded=forwarded,
        routes=routes,
        buckets=_buckets_of(account=account, days=wanted),
        now=now,
        tolerance=tolerance_from_settings(),
    )
    return _rows_write(account=account, days=wanted, computed=computed, now=now)


# --- computing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketCounts:
    """The parts of a ProviderUsageBucket reconciliation reads."""

    bucket_start: dt.datetime
    bucket_width: str
    model: str
    api_key_id: str
    requests: int | None
    input_uncached_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    output_tokens: int | None
    revision: int


@dataclass(frozen=True)
class ComputedRow:
    key: GroupKey
    comparison: Comparison
    report_revision: int
    # The aliases and tenants whose records make up our side (for `explain`).
    aliases: frozenset[str]
    tenants: frozenset[uuid.UUID]


def _buckets_of(*, account: ProviderAccount, days: Sequence[dt.date]) -> list[BucketCounts]:
    if not days:
        return []
    query = Q()
    for start, end in day_runs(days):
        query |= Q(bucket_start__gte=day_start(start), bucket_start__lt=day_start(end))
    rows = (
        ProviderUsageBucket.objects.filter(query, account=account)
        .values_list(
            "bucket_start",
            "bucket_width",
            "model",
            "api_key_id",
            "requests",
            "input_uncached_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "revision",
        )
        .order_by()
    )
    return [BucketCounts(*row) for row in rows]


def rows_compute(
    *,
    account: ProviderAccount,
    days: Sequence[dt.date],
    forwarded: Sequence[ForwardedRow],
    routes: Sequence[Route],
    buckets: Sequence[BucketCounts],
    now: dt.datetime,
    tolerance: Tolerance,
) -> list[ComputedRow]:
    """The rows of `days`, without reading or writing anything (see the module docstring)."""
    provider = Provider(account.provider)
    in_days = set(days)
    alias_keys = {r.alias: r.upstream_key_id for r in routes if r.upstream_key_id}
    model_map: dict[str, str] = account.model_map or {}

    # (day, model) compared summed over keys
    summed: set[tuple[dt.date, str]] = set()
    unkeyed_route_models = {r.upstream_model for r in routes if not r.upstream_key_id}
    ours_rows = [r for r in forwarded if r.day in in_days]
    for row in ours_rows:
        if row.upstream_model in unkeyed_route_models or not alias_keys.get(row.alias):
            summed.add((row.day, row.upstream_model))

    chosen = _buckets_at_finest_width(b for b in buckets if _utc_day(b.bucket_start) in in_days)
    for bucket in chosen:
        model = model_map.get(bucket.model, bucket.model)
        if not bucket.api_key_id or model in unkeyed_route_models:
            summed.add((_utc_day(bucket.bucket_start), model))

    def key_of(day: dt.date, model: str, key_id: str) -> GroupKey:
        return (day, model, "" if (day, model) in summed else key_id)

    sums: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * 6)
    aliases: dict[GroupKey, set[str]] = defaultdict(set)
    tenants: dict[GroupKey, set[uuid.UUID]] = defaultdict(set)
    for row in ours_rows:
        key = key_of(row.day, row.upstream_model, alias_keys.get(row.alias, ""))
        total = sums[key]
        total[0] += row.requests
        total[1] += row.input_tokens
        total[2] += row.cached_input_tokens
        total[3] += row.cache_write_tokens
        total[4] += row.output_tokens
        total[5] += row.reasoning_tokens
        aliases[key].add(row.alias)
        tenants[key].add(row.tenant_id)
    ours = {key: Ours(*total) for key, total in sums.items()}

    theirs: dict[GroupKey, _Reported] = defaultdict(_Reported)
    for bucket in chosen:
        day = _utc_day(bucket.bucket_start)
        key = key_of(day, model_map.get(bucket.model, bucket.model), bucket.api_key_id)
        reported = theirs[key]
        reported.theirs = reported.theirs + Theirs(
            requests=bucket.requests,
            input_uncached=bucket.input_uncached_tokens,
            cache_read=bucket.cache_read_tokens,
            cache_write=bucket.cache_write_tokens,
            output=bucket.output_tokens,
        )
        reported.revision = max(reported.revision, bucket.revision)

    out = []
    for key in sorted(ours.keys() | theirs.keys()):
        found = theirs.get(key)
        comparisons = compare_group(
            provider=provider,
            ours=ours.get(key, Ours()),
            theirs=found.theirs if found else None,
            settled=day_settled(day=key[0], now=now),
            tolerance=tolerance,
        )
        for comparison in comparisons:
            out.append(
                ComputedRow(
                    key=key,
                    comparison=comparison,
                    report_revision=found.revision if found else 0,
                    aliases=frozenset(aliases.get(key, ())),
                    tenants=frozenset(tenants.get(key, ())),
                )
            )
    return out


def _utc_day(instant: dt.datetime) -> dt.date:
    return instant.astimezone(dt.UTC).date()


def _buckets_at_finest_width(buckets: Iterable[BucketCounts]) -> list[BucketCounts]:
    by_day: dict[dt.date, list[BucketCounts]] = defaultdict(list)
    for bucket in buckets:
        by_day[_utc_day(bucket.bucket_start)].append(bucket)
    chosen: list[BucketCounts] = []
    for day_buckets in by_day.values():
        widths = {b.bucket_width for b in day_buckets}
        finest = min(widths, key=lambda w: _WIDTHS.index(w) if w in _WIDTHS else len(_WIDTHS))
        chosen.extend(b for b in day_buckets if b.bucket_width == finest)
    return chosen


# --- explaining ----------------------------------------------------------------------------


def _explanations(
    *, account: ProviderAccount, rows: Sequence[ComputedRow]
) -> dict[GroupKey, dict[str, Any]]:
    """`explain` for each group with a row that does not match: one query per day, on the
    ledger's (tenant, started_at) index through the group's tenants."""
    wanted: dict[GroupKey, ComputedRow] = {}
    for row in rows:
        if row.comparison.verdict not in _NOTHING_TO_EXPLAIN:
            wanted.setdefault(row.key, row)
    archived = set(
        LedgerArchive.objects.filter(state=LedgerArchive.State.DROPPED).values_list(
            "month", flat=True
        )
    )
    by_day: dict[dt.date, list[ComputedRow]] = defaultdict(list)
    for row in wanted.values():
        by_day[row.key[0]].append(row)
    out: dict[GroupKey, dict[str, Any]] = {}
    for day, day_rows in by_day.items():
        start = day_start(day)
        if start.replace(day=1) in archived:
            out.update({row.key: {"source": "archived"} for row in day_rows})
            continue
        tenants = set().union(*(row.tenants for row in day_rows))
        found: list[dict[str, Any]] = []
        if tenants:
            found = list(
                UsageRecord.objects.filter(
                    _ANY_EXPLAINED,
                    tenant_id__in=sorted(tenants),
                    started_at__gte=start,
                    started_at__lt=start + dt.timedelta(days=1),
                    provider_account_id=account.pk,
                    upstream_model__in=sorted({row.key[1] for row in day_rows}),
                )
                .values("upstream_model", "alias", "status", "client_disconnected")
                .annotate(records=Count("id"), **{t: Sum(t) for t in _EXPLAIN_TOKENS})
                .order_by()
            )
        for row in day_rows:
            total = _empty_explain()
            for record in found:
                if record["upstream_model"] != row.key[1] or record["alias"] not in row.aliases:
                    continue
                for kind in _kinds_of(record):
                    entry = total[kind]
                    entry["records"] += record["records"]
                    for name in _EXPLAIN_TOKENS:
                        entry[name] += record[name] or 0
            out[row.key] = {"source": "ledger", **total}
    return out


_ANY_EXPLAINED = Q(
    status__in=[
        UsageRecord.Status.INCOMPLETE,
        UsageRecord.Status.FAILED,
        UsageRecord.Status.UPSTREAM_ERROR,
    ]
) | Q(client_disconnected=True)


def _kinds_of(record: dict[str, Any]) -> list[str]:
    kinds = [record["status"]] if record["status"] in EXPLAIN_KINDS else []
    if record["client_disconnected"]:
        kinds.append("client_disconnected")
    return kinds


def _empty_explain() -> dict[str, dict[str, int]]:
    return {kind: dict.fromkeys(("records", *_EXPLAIN_TOKENS), 0) for kind in EXPLAIN_KINDS}


# --- writing -------------------------------------------------------------------------------


def _rows_write(
    *,
    account: ProviderAccount,
    days: Sequence[dt.date],
    computed: Sequence[ComputedRow],
    now: dt.datetime,
) -> ReconcileResult:
    explanations = _explanations(account=account, rows=computed)
    created: list[ReconciliationRow] = []
    updated: list[ReconciliationRow] = []
    changed_days: set[dt.date] = set()
    unchanged = 0
    with transaction.atomic():
        # One writer per account at a time: the beat's run and a command's do not race.
        ProviderAccount.objects.select_for_update().filter(pk=account.pk).first()
        existing = {
            (row.day, row.upstream_model, row.api_key_id, row.token_class): row
            for row in ReconciliationRow.objects.filter(account=account, day__in=days)
        }
        for row in computed:
            comparison = row.comparison
            day, model, key_id = row.key
            values: dict[str, Any] = {
                "ours": comparison.ours,
                "theirs": comparison.theirs,
                "drift": comparison.drift,
                "relative_drift": comparison.relative_drift,
                "status": comparison.status.value,
                "reasoning": comparison.reasoning,
                "drift_equals_reasoning": comparison.drift_equals_reasoning,
                "explain": {}
                if comparison.verdict in _NOTHING_TO_EXPLAIN
                else explanations.get(row.key, {}),
                "report_revision": row.report_revision,
            }
            current = existing.pop((day, model, key_id, comparison.token_class.value), None)
            if current is None:
                created.append(
                    ReconciliationRow(
                        account=account,
                        day=day,
                        upstream_model=model,
                        api_key_id=key_id,
                        token_class=comparison.token_class.value,
                        computed_at=now,
                        **values,
                    )
                )
                changed_days.add(day)
            elif any(_differs(getattr(current, name), value) for name, value in values.items()):
                for name, value in values.items():
                    setattr(current, name, value)
                current.computed_at = now
                updated.append(current)
                changed_days.add(day)
            else:
                unchanged += 1
        ReconciliationRow.objects.bulk_create(created, batch_size=1000)
        ReconciliationRow.objects.bulk_update(
            updated, [*_VALUE_FIELDS, "computed_at"], batch_size=1000
        )
        stale = list(existing.values())
        if stale:
            ReconciliationRow.objects.filter(pk__in=[r.pk for r in stale]).delete()
            changed_days |= {r.day for r in stale}
        if changed_days:
            account_id, told = account.pk, sorted(changed_days)
            transaction.on_commit(lambda: rows_changed(account_id, told))
    return ReconcileResult(
        account_id=account.pk,
        days=tuple(days),
        created=len(created),
        updated=len(updated),
        deleted=len(stale),
        unchanged=unchanged,
        changed_days=tuple(sorted(changed_days)),
    )


def _differs(stored: Any, value: Any) -> bool:
    if isinstance(stored, Decimal) or isinstance(value, Decimal):
        if stored is None or value is None:
            return stored is not value
        return Decimal(stored) != Decimal(value)
    return bool(stored != value)
