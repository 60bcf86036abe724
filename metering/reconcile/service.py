"""Reconciliation rows: what the ledger forwarded against what the provider reports, per
account x UTC day x upstream model (x the provider's key id) x token class (decision 0116).

Our side comes from rollups (`metering.reconcile.ours.forwarded_usage`), never from raw
records; the report's side from the imported usage buckets. The pure comparison is
`metering.reconcile.compare`.

Invariants:
- Groups. Ours are keyed by the upstream model the records were served with and by the
  key id the alias's route declared *that day* (`UpstreamKeyPeriod`, the route's key
  history); theirs by the report's model, mapped through `ProviderAccount.model_map`,
  and the report's `api_key_id`. A (day, model) is compared per key only when every
  alias that served it had exactly one key in force all day, every route of the account
  with a period on that day serving the model did too, and the report is grouped by
  key; otherwise it is compared summed over keys (`api_key_id` ''). A reported key that
  was in force at some time of the day, or within KEY_EDGE_SLACK (1 h, a bucket) of its
  edges, without being an alias's one key all day (a rotation that day or at midnight)
  also makes the (day, model) summed. So in per-key mode a reported key that no route of
  the account had in force on the day has no usage of ours: its rows are
  `missing_in_ledger` (a leaked key or a bypass). A rotation splits the history at its
  instant: days before it compare the old key, days after it the new one, and usage
  reported on the old key days after the rotation is a leak. (A key that was an alias's
  one key all day with no usage of ours at all is `missing_in_ledger` too: the key was
  used outside Reckon.)
- Targets (decision 0117). Records that name the target that served them (`route_id`)
  are attributed per target: the key that route declared all day, so an alias served by
  two deployments on one account with a key each is compared per key. Records from
  before routing (route 0) keep the alias rule above. A model is compared summed when
  any route serving it on the account lacks one key all day. An attempt that failed
  over is unanswered with no tokens: it adds no drift.
- Buckets. A day is read at one bucket width, the finest the import stored for it, so a
  window imported at 1h and again at 1d is never counted twice.
- Settling. A day is `pending` until RECKON_PROVIDER_REPORT_SETTLE_DAYS whole days after
  its end and, as long as the import still re-reads it, until none of its buckets
  changed for the import's CHANGE_SETTLE (`day_settled`, the one rule; billing reads the
  row statuses; `metering.providers.importer.provider_import_window`).
- Writes are idempotent. Rows are upserted on their key (account, day, model, key,
  class) under a lock on the account; a row whose values did not change is not written;
  a row of the days recomputed that no longer has ours or theirs (the report dropped a
  group, a route's key changed) is deleted, since rows are derived data recomputed in
  place and the report's history is kept in `ProviderBucketRevision`. After the commit,
  `hooks.rows_changed` gets every day of the run, changed or not (billing's alerts are
  idempotent; an alert lost to a failed handler or a killed worker fires on the next
  run); `ReconcileResult.changed_days` still says which changed.
- Errors, disconnects, cut streams (counted by the rollups, `ForwardedRow`): upstream
  errors and failures are not requests of ours (they were not answered), their recorded
  tokens, usually 0, count; a client disconnect counts in full (the proxy drained the
  upstream); a cut stream counts the usage seen up to the cut, so the provider may report
  more. Rows of a settled day that do not match carry `explain`: the counts and tokens of the group's
  incomplete, client-disconnected, failed and upstream-error records, read from the raw
  ledger while the day's month is in the database; a day still settling is never
  explained (the hourly run would scan today's raw records).
- Ours are read from the primary, not the replica: a lagging replica would make a key
  first used in the lag look like a leak.
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
from django.db.models import Count, Max, Q, Sum

from metering.models import (
    LedgerArchive,
    ProviderAccount,
    ProviderCostBucket,
    ProviderUsageBucket,
    ReconciliationRow,
    Route,
    UpstreamKeyPeriod,
    UsageRecord,
)
from metering.providers.importer import CHANGE_SETTLE
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
from metering.reconcile.ours import ForwardedRow, ForwardedTargetRow, forwarded_usage_by_target

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
# A key in force this close to a day's edge may still have usage in the day's first or
# last bucket (a request that began before a rotation and ended after it is reported at
# the provider's time): such a key makes the day's model compared summed, never a leak.
KEY_EDGE_SLACK = dt.timedelta(hours=1)
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


def day_settled(*, day: dt.date, now: dt.datetime, last_changed: dt.datetime | None = None) -> bool:
    """Whether the report of `day` no longer settles (the one rule: row statuses, and
    billing through them): RECKON_PROVIDER_REPORT_SETTLE_DAYS whole days after its end,
    and none of its buckets changed within the import's CHANGE_SETTLE before `now` (the
    import keeps re-reading such a day, `provider_import_window`). `last_changed`: the
    latest `changed_at` of the day's buckets (`days_last_changed`)."""
    settle = dt.timedelta(days=1 + max(0, int(settings.RECKON_PROVIDER_REPORT_SETTLE_DAYS)))
    if now < day_start(day) + settle:
        return False
    return last_changed is None or now >= last_changed + CHANGE_SETTLE


def days_last_changed(
    *, account: ProviderAccount, days: Iterable[dt.date]
) -> dict[dt.date, dt.datetime]:
    """The latest `changed_at` of the account's usage and cost buckets per UTC day, counting
    only buckets that CHANGED (revised or removed: revision > 1), the importer's own rule
    for re-reading a day: a bucket merely created (a new day, a backfill) is no change."""
    wanted = sorted(set(days))
    if not wanted:
        return {}
    query = Q()
    for start, end in day_runs(wanted):
        query |= Q(bucket_start__gte=day_start(start), bucket_start__lt=day_start(end))
    out: dict[dt.date, dt.datetime] = {}
    for model in (ProviderUsageBucket, ProviderCostBucket):
        found = (
            model.objects.filter(query, account=account, revision__gt=1)  # type: ignore[attr-defined]
            .values_list("bucket_start")
            .annotate(last=Max("changed_at"))
            .order_by()
        )
        for bucket_start, last in found:
            day = _utc_day(bucket_start)
            if day in out and out[day] >= last:
                continue
            out[day] = last
    return {day: last for day, last in out.items() if day in set(wanted)}


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
    forwarded: list[ForwardedTargetRow] = []
    for start, end in day_runs(wanted):
        # Ours from the primary (review S9): rows and alerts are written from it, and a
        # lagging replica would show a key first used in the lag as a leak.
        forwarded.extend(
            forwarded_usage_by_target(account_id=account.pk, start=start, end=end, primary=True)
        )
    changed = days_last_changed(account=account, days=wanted)
    computed = rows_compute(
        account=account,
        days=wanted,
        forwarded=forwarded,
        periods=key_periods_of(account=account),
        buckets=_buckets_of(account=account, days=wanted),
        settled={d: day_settled(day=d, now=now, last_changed=changed.get(d)) for d in wanted},
        tolerance=tolerance_from_settings(),
    )
    return _rows_write(account=account, days=wanted, computed=computed, now=now)


@dataclass(frozen=True)
class KeyPeriod:
    """A span over which a route (its alias, serving its upstream model) declared an
    upstream key id on the account ('' none); None bounds are open. `route_id`: the
    route (target) itself (0: not known, the alias rule alone)."""

    alias: str
    upstream_model: str
    upstream_key_id: str
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    route_id: int = 0

    def overlaps(self, *, start: dt.datetime, end: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from < end) and (
            self.valid_until is None or self.valid_until > start
        )

    def covers(self, *, start: dt.datetime, end: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= start) and (
            self.valid_until is None or self.valid_until >= end
        )


def key_periods_of(*, account: ProviderAccount) -> list[KeyPeriod]:
    """The account's key history (`UpstreamKeyPeriod`); a route on the account with no
    history at all reads as one open period of what it declares now (migration 0020's
    rule: the only key known)."""
    periods = [
        KeyPeriod(
            alias=p.route.alias_id,
            upstream_model=p.route.upstream_model,
            upstream_key_id=p.upstream_key_id,
            valid_from=p.valid_from,
            valid_until=p.valid_until,
            route_id=p.route_id,
        )
        for p in UpstreamKeyPeriod.objects.filter(provider_account=account).select_related("route")
    ]
    unrecorded = Route.objects.filter(provider_account=account).exclude(
        pk__in=UpstreamKeyPeriod.objects.values("route_id")
    )
    periods.extend(
        KeyPeriod(
            alias=r.alias_id,
            upstream_model=r.upstream_model,
            upstream_key_id=r.upstream_key_id,
            valid_from=None,
            valid_until=None,
            route_id=r.pk,
        )
        for r in unrecorded
    )
    return periods


@dataclass(frozen=True)
class _DayKeys:
    """Which keys a day's usage is attributed to (see the module docstring)."""

    # alias -> its one key, in force all day (aliases not here are compared summed): the
    # rule for records from before routing (route 0)
    alias_key: dict[str, str]
    # route (target) -> its one key, in force all day: the rule for records that name
    # the target that served them (decision 0117); targets not here are compared summed
    route_key: dict[int, str]
    # the upstream models of routes without one key all day: compared summed
    summed_models: frozenset[str]
    # keys in force at some time of the day (with KEY_EDGE_SLACK) but not all day
    partial_keys: frozenset[str]

    def key_of(self, *, alias: str, route_id: int) -> str | None:
        """The one key of a row's records (None: compared summed)."""
        if route_id:
            return self.route_key.get(route_id)
        return self.alias_key.get(alias)


def _one_key(spans: list[KeyPeriod], start: dt.datetime, end: dt.datetime) -> str | None:
    """The key of `spans` when they are one period with a key covering [start, end)."""
    only = spans[0]
    if len(spans) == 1 and only.upstream_key_id and only.covers(start=start, end=end):
        return only.upstream_key_id
    return None


def _day_keys(periods: Sequence[KeyPeriod], day: dt.date) -> _DayKeys:
    start, end = day_start(day), day_start(day) + dt.timedelta(days=1)
    by_alias: dict[str, list[KeyPeriod]] = defaultdict(list)
    by_route: dict[int, list[KeyPeriod]] = defaultdict(list)
    for period in periods:
        if period.overlaps(start=start, end=end):
            by_alias[period.alias].append(period)
            by_route[period.route_id].append(period)
    alias_key: dict[str, str] = {}
    for alias, spans in by_alias.items():
        if (key := _one_key(spans, start, end)) is not None:
            alias_key[alias] = key
    # A model is summed when a route serving it lacks one key all day. Periods without a
    # route (0) fall back to the alias rule: their alias's spans decide.
    route_key: dict[int, str] = {}
    summed_models: set[str] = set()
    for route_id, spans in by_route.items():
        if not route_id:
            for alias in {p.alias for p in spans}:
                if alias not in alias_key:
                    summed_models |= {p.upstream_model for p in by_alias[alias]}
            continue
        if (key := _one_key(spans, start, end)) is not None:
            route_key[route_id] = key
        else:
            summed_models |= {p.upstream_model for p in spans}
    near = {
        p.upstream_key_id
        for p in periods
        if p.upstream_key_id and p.overlaps(start=start - KEY_EDGE_SLACK, end=end + KEY_EDGE_SLACK)
    }
    return _DayKeys(
        alias_key=alias_key,
        route_key=route_key,
        summed_models=frozenset(summed_models),
        partial_keys=frozenset(near - set(alias_key.values()) - set(route_key.values())),
    )


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
    settled: bool
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
    forwarded: Sequence[ForwardedRow | ForwardedTargetRow],
    periods: Sequence[KeyPeriod],
    buckets: Sequence[BucketCounts],
    settled: dict[dt.date, bool],
    tolerance: Tolerance,
) -> list[ComputedRow]:
    """The rows of `days`, without reading or writing anything (see the module docstring).
    `settled`: `day_settled` of each day."""
    provider = Provider(account.provider)
    in_days = set(days)
    model_map: dict[str, str] = account.model_map or {}
    day_keys = {day: _day_keys(periods, day) for day in in_days}

    # (day, model) compared summed over keys
    summed: set[tuple[dt.date, str]] = set()
    ours_rows = [r for r in forwarded if r.day in in_days]
    for row in ours_rows:
        keys = day_keys[row.day]
        one_key = keys.key_of(alias=row.alias, route_id=_route_of(row))
        if row.upstream_model in keys.summed_models or one_key is None:
            summed.add((row.day, row.upstream_model))

    chosen = _buckets_at_finest_width(b for b in buckets if _utc_day(b.bucket_start) in in_days)
    for bucket in chosen:
        day = _utc_day(bucket.bucket_start)
        keys = day_keys[day]
        model = model_map.get(bucket.model, bucket.model)
        if (
            not bucket.api_key_id
            or model in keys.summed_models
            or bucket.api_key_id in keys.partial_keys
        ):
            summed.add((day, model))

    def key_of(day: dt.date, model: str, key_id: str) -> GroupKey:
        return (day, model, "" if (day, model) in summed else key_id)

    sums: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * 7)
    aliases: dict[GroupKey, set[str]] = defaultdict(set)
    tenants: dict[GroupKey, set[uuid.UUID]] = defaultdict(set)
    for row in ours_rows:
        one_key = day_keys[row.day].key_of(alias=row.alias, route_id=_route_of(row))
        key = key_of(row.day, row.upstream_model, one_key or "")
        total = sums[key]
        total[0] += row.requests
        total[1] += row.input_tokens
        total[2] += row.cached_input_tokens
        total[3] += row.cache_write_tokens
        total[4] += row.output_tokens
        total[5] += row.reasoning_tokens
        total[6] += row.records
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
            settled=settled[key[0]],
            tolerance=tolerance,
        )
        for comparison in comparisons:
            out.append(
                ComputedRow(
                    key=key,
                    comparison=comparison,
                    settled=settled[key[0]],
                    report_revision=found.revision if found else 0,
                    aliases=frozenset(aliases.get(key, ())),
                    tenants=frozenset(tenants.get(key, ())),
                )
            )
    return out


def _route_of(row: ForwardedRow | ForwardedTargetRow) -> int:
    """The target a row of ours names (0: none, the alias rule)."""
    return row.route_id if isinstance(row, ForwardedTargetRow) else 0


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
    """`explain` for each group of a settled day with a row that does not match: one query
    per day, on the ledger's (tenant, started_at) index through the group's tenants. Never
    for a day still settling (review S8): the hourly run would read today's raw records."""
    wanted: dict[GroupKey, ComputedRow] = {}
    for row in rows:
        if _explained(row):
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


def _explained(row: ComputedRow) -> bool:
    return row.settled and row.comparison.status not in _NOTHING_TO_EXPLAIN


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
                "explain": explanations.get(row.key, {}) if _explained(row) else {},
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
        # Every day of the run, changed or not (review B1): a handler that failed, or a
        # worker killed after the commit, is made good by the next run; the handlers are
        # idempotent.
        account_id, told = account.pk, list(days)
        if told:
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
