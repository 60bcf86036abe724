"""Random usage for the analytics property tests: records over a few days (hour
boundaries likely), written through the ledger's write paths into random shards, and
random windows and filters; and the references the reads must equal, plain ORM
aggregates over the raw records written here, sharing no code with the reads under test
(`metering.selectors`)."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Trunc
from hypothesis import strategies as st

from metering.ledger.orm import usage_records_write
from metering.models import ApiKey, Tenant, UsageRecord
from metering.reconcile.ours import ForwardedRow, ForwardedTotal, forwarded_totals, forwarded_usage
from metering.selectors import (
    GRANULARITIES,
    GROUPINGS,
    UsageFilter,
    reasoning_tokens_since,
    spend_since,
    usage_series,
    usage_series_raw,
    usage_summary,
    usage_summary_raw,
)
from tests.usage_helpers import record_for

T0 = datetime(2026, 11, 29, 21, tzinfo=UTC)  # a month's end inside the span
SPAN_HOURS = 72
ACCOUNTS = (1, 2)  # provider account stamps (no foreign key: the ids need no rows)
ROUTES = (11, 12)  # target stamps (no foreign key either)
HOUR_US = 3_600_000_000

# An instant: on an hour, a microsecond either side of one, or anywhere in it.
instants = st.builds(
    lambda hour, kind, anywhere: (
        T0
        + timedelta(
            microseconds=hour * HOUR_US + {"on": 0, "before": -1, "after": 1, "any": anywhere}[kind]
        )
    ),
    st.integers(0, SPAN_HOURS - 1),
    st.sampled_from(["on", "before", "after", "any"]),
    st.integers(0, HOUR_US - 1),
)

records = st.lists(
    st.fixed_dictionaries(
        {
            "tenant": st.integers(0, 1),
            "key": st.integers(0, 2),
            "alias": st.sampled_from(["reasoner", "Thinker", "b-2"]),
            "accelerator": st.sampled_from(["", "h100"]),
            "flagged": st.booleans(),
            "started_at": instants,
            "tokens": st.tuples(*(st.integers(0, 1000) for _ in range(5))),
            # Spend at list price, exact in binary too (SQLite sums it as a double); None:
            # uncosted.
            "spend": st.none() | st.integers(0, 10**7).map(lambda n: Decimal(n) / 1024),
            "shard": st.integers(0, 3),
            # the route's provider account as served (None: none), its upstream model,
            # and how the call ended (the last two: the upstream did not answer)
            "account": st.sampled_from([None, *ACCOUNTS]),
            "model": st.sampled_from(["m", "m-2"]),
            "status": st.sampled_from(["completed", "incomplete", "upstream_error", "failed"]),
            # the target that served it (None: before routing) and whether this attempt
            # failed over to another one (then: failed, no tokens, no spend)
            "route": st.sampled_from([None, *ROUTES]),
            "failed_over": st.booleans(),
            "effort": st.sampled_from([None, "", "low", "high"]),
        }
    ),
    min_size=0,
    max_size=40,
)


@st.composite
def windows(draw: st.DrawFn) -> tuple[datetime | None, datetime | None]:
    since = draw(st.none() | instants)
    until = draw(st.none() | instants)
    if since is not None and until is not None and since >= until:
        since, until = until, since + timedelta(microseconds=1) if since == until else since
    return since, until


# A limit's `since`: a whole UTC hour in or around the span (None: all time).
whole_hours = st.none() | st.integers(-1, SPAN_HOURS + 1).map(lambda h: T0 + timedelta(hours=h))


def tenants_with_keys() -> list[tuple[Tenant, list[ApiKey]]]:
    world = []
    for name in ("acme", "globex"):
        tenant = Tenant.objects.create(name=f"{name}-{uuid.uuid4().hex[:8]}")
        keys = [
            ApiKey.objects.create(tenant=tenant, prefix=f"rk_{i}", key_hash=uuid.uuid4().hex)
            for i in range(3)
        ]
        world.append((tenant, keys))
    return world


def as_ledger_rows(world: list[tuple[Tenant, list[ApiKey]]], drawn: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """(shard, ledger row) per drawn record."""
    rows = []
    for r in drawn:
        key = world[r["tenant"]][1][r["key"]]
        tokens = dict(
            zip(
                (
                    "input_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                ),
                r["tokens"],
                strict=True,
            )
        )
        row = record_for(
            key,
            alias=r["alias"],
            accelerator=r["accelerator"],
            flags=["reasoning_exceeds_output"] if r["flagged"] else [],
            started_at=r["started_at"],
            finished_at=r["started_at"],
            spend_usd=r.get("spend"),
            provider_account_id=r.get("account"),
            upstream_model=r.get("model", "m"),
            status=r.get("status", "completed"),
            **tokens,
        )
        route = r.get("route")
        if route is not None:
            row |= {"route_id": route, "attempt": 1, "reasoning_effort": r.get("effort")}
            row["failed_over"] = bool(r.get("failed_over"))
            if row["failed_over"]:  # an attempt retried on another target, as the proxy
                row |= {"status": "failed", "upstream_status": 0, "spend_usd": Decimal(0)}
                row |= dict.fromkeys(tokens, 0)
        rows.append((r["shard"], row))
    return rows


def write_orm(rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Through the ORM path (shard 0), in a few batches."""
    for i in range(0, len(rows), 7):
        usage_records_write([row for _, row in rows[i : i + 7]])


COUNTED = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def _records_in(filters: UsageFilter) -> QuerySet[UsageRecord]:
    records = UsageRecord.objects.filter(tenant_id=filters.tenant_id)
    if filters.since is not None:
        records = records.filter(started_at__gte=filters.since)
    if filters.until is not None:
        records = records.filter(started_at__lt=filters.until)
    if filters.api_key_id is not None:
        records = records.filter(api_key_id=filters.api_key_id)
    if filters.alias:
        records = records.filter(alias=filters.alias)
    return records


def _finished(row: dict[str, Any]) -> dict[str, Any]:
    """A reference row as the API shows it: None sums as 0, total tokens and the
    reasoning share of output (6 decimals, the decimal context's rounding)."""
    row.update({name: row[name] or 0 for name in COUNTED})
    row["total_tokens"] = sum(row[name] for name in COUNTED)
    output = row["output_tokens"] + row["reasoning_tokens"]
    row["reasoning_share_of_output"] = (
        None
        if output == 0
        else str((Decimal(row["reasoning_tokens"]) / output).quantize(Decimal("0.000001")))
    )
    return row


# Client calls: every record but the attempts that failed over (decision 0117).
CALLS = Count("id") - Count("id", filter=Q(failed_over=True))


def reference_summary(filters: UsageFilter, group_by: str | None) -> list[dict[str, Any]]:
    """The usage summary by one plain aggregate over the raw records, groups in code-point
    order (decision 0113); requests count client calls."""
    sums = {"requests": CALLS, **{name: Sum(name) for name in COUNTED}}
    records = _records_in(filters)
    if group_by is None:
        return [_finished(records.aggregate(**sums))]
    if group_by == "day":
        records = records.annotate(day_start=Trunc("started_at", "day", tzinfo=UTC))
        rows = list(records.values("day_start").annotate(**sums).order_by())
        for row in rows:
            row["day"] = row.pop("day_start").date().isoformat()
    elif group_by == "api_key":
        rows = list(
            records.values("api_key_id", api_key_prefix=F("api_key__prefix"))
            .annotate(**sums)
            .order_by()
        )
    else:
        rows = list(records.values(group_by).annotate(**sums).order_by())
    order = {"day": "day", "api_key": "api_key_id", "alias": "alias"}[group_by]
    return sorted((_finished(row) for row in rows), key=lambda row: row[order])


def reference_series(
    filters: UsageFilter, granularity: str, group_by: str | None
) -> list[dict[str, Any]]:
    """The usage series by one plain aggregate over the raw records: UTC buckets, then
    groups in code-point order; requests count client calls."""
    sums = {"requests": CALLS, **{name: Sum(name) for name in COUNTED}}
    column = {None: None, "alias": "alias", "api_key": "api_key_id"}[group_by]
    records = _records_in(filters).annotate(start=Trunc("started_at", granularity, tzinfo=UTC))
    names = ["start"] if column is None else ["start", column]
    rows = [_finished(row) for row in records.values(*names).annotate(**sums).order_by()]
    return sorted(rows, key=lambda row: tuple(row[name] for name in names))


def assert_rollups_serve_as_raw(
    tenant: Tenant,
    keys: list[ApiKey],
    window: tuple[datetime | None, datetime | None],
    alias: str | None,
    key_index: int | None,
) -> int:
    """Every summary grouping and every series granularity and grouping, rollup-served,
    equal the raw scan for the window and filters. Returns the requests in the window."""
    filters = UsageFilter(
        tenant_id=tenant.pk,
        since=window[0],
        until=window[1],
        alias=alias,
        api_key_id=None if key_index is None else keys[key_index].pk,
    )
    for group_by in (None, *sorted(GROUPINGS)):
        expected = reference_summary(filters, group_by)
        assert usage_summary(filters=filters, group_by=group_by) == expected, group_by
        assert usage_summary_raw(filters=filters, group_by=group_by) == expected, group_by
    for granularity in GRANULARITIES:
        for group_by in (None, "alias", "api_key"):
            expected = reference_series(filters, granularity, group_by)
            served = usage_series(filters=filters, granularity=granularity, group_by=group_by)
            raw = usage_series_raw(filters=filters, granularity=granularity, group_by=group_by)
            assert served == expected, (granularity, group_by)
            assert raw == expected, (granularity, group_by)
    return int(usage_summary(filters=filters)[0]["requests"])


def assert_limits_read_as_raw(tenant: Tenant, keys: list[ApiKey], since: datetime | None) -> None:
    """What limits load (`spend_since`, `reasoning_tokens_since`: the rollups) for the
    tenant and for each of its keys, from the whole hour `since` (None: all time; the
    reasoning budget from the span's start), equal a plain sum of the raw records,
    flagged ones included."""
    for key in (None, *keys):
        key_id = None if key is None else key.pk
        records = UsageRecord.objects.filter(tenant_id=tenant.pk)
        if key_id is not None:
            records = records.filter(api_key_id=key_id)
        spent = records if since is None else records.filter(started_at__gte=since)
        reasoning_from = T0 if since is None else since
        raw_spend = spent.aggregate(total=Sum("spend_usd"))["total"] or 0
        raw_reasoning = records.filter(started_at__gte=reasoning_from).aggregate(
            total=Sum("reasoning_tokens")
        )["total"]
        assert spend_since(tenant_id=tenant.pk, api_key_id=key_id, since=since) == raw_spend
        assert reasoning_tokens_since(
            tenant_id=tenant.pk, api_key_id=key_id, since=reasoning_from
        ) == (raw_reasoning or 0)


def assert_forwarded_as_raw() -> None:
    """What reconciliation reads of each provider account (`forwarded_usage`, from the
    rollups) over every day of the span equals a plain aggregate of the raw records
    stamped with it: per UTC day, upstream model, tenant, alias and accelerator, every
    record and the answered requests (every record but upstream errors and failures), the tokens of flagged and
    unflagged records, the serving cost of the unflagged ones."""
    start = T0.date() - timedelta(days=1)
    end = (T0 + timedelta(hours=SPAN_HOURS)).date() + timedelta(days=1)
    for account in ACCOUNTS:
        rows = (
            UsageRecord.objects.filter(provider_account_id=account)
            .annotate(day=Trunc("started_at", "day", tzinfo=UTC))
            .values("day", "upstream_model", "tenant_id", "alias", "accelerator")
            .annotate(
                records=Count("id"),
                answered=Count("id", filter=~Q(status__in=["upstream_error", "failed"])),
                cost=Sum("serving_cost_usd", filter=Q(flags=[])),
                **{name: Sum(name) for name in COUNTED},
            )
            .order_by()
        )
        expected = sorted(
            (
                ForwardedRow(
                    day=row["day"].date(),
                    upstream_model=row["upstream_model"],
                    tenant_id=row["tenant_id"],
                    alias=row["alias"],
                    accelerator=row["accelerator"],
                    records=row["records"],
                    requests=row["answered"],
                    **{name: row[name] for name in COUNTED},
                    serving_cost_usd=row["cost"] or Decimal(0),
                )
                for row in rows
            ),
            key=lambda r: (r.day, r.upstream_model, r.tenant_id, r.alias, r.accelerator),
        )
        assert forwarded_usage(account_id=account, start=start, end=end) == expected, account
        summed: dict[tuple[Any, ...], list[Any]] = {}
        for r in expected:
            counts = [r.records, r.requests, *(getattr(r, n) for n in COUNTED), r.serving_cost_usd]
            key = (r.day, r.upstream_model, r.alias, r.accelerator)
            summed[key] = [a + b for a, b in zip(summed.get(key, [0] * 8), counts, strict=True)]
        totals = [ForwardedTotal(*key, *counts) for key, counts in sorted(summed.items())]
        got = forwarded_totals(account_id=account, start=start, end=end, primary=True)
        if connection.vendor == "sqlite":  # SQLite sums decimals as floats: money aside
            totals = [t._replace(serving_cost_usd=0) for t in totals]
            got = [t._replace(serving_cost_usd=0) for t in got]
        assert got == totals, account
