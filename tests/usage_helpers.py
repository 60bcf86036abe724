"""Usage records for tests, written through the ledger's own write path."""

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from metering.calendar import month_day
from metering.ledger.orm import usage_records_write
from metering.ledger.partitions import partition_create, partitions_ensure
from metering.ledger.record import Rates, serving_cost
from metering.ledger.spool import Spool
from metering.models import ApiKey, ServingCostRate
from metering.usage import LEDGER_COLUMNS


def usage_row(
    api_key: ApiKey,
    *,
    started_at: datetime | None = None,
    rate: ServingCostRate | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A complete usage record as the proxy hands it to the ledger (costed at `rate`)."""
    at = started_at or datetime.now(UTC)
    row: dict[str, Any] = {
        "request_id": uuid.uuid4(),
        "tenant_id": api_key.tenant_id,
        "api_key_id": api_key.pk,
        "alias": "reasoner",
        "provider": "openai",
        "upstream_model": "m",
        "accelerator": rate.accelerator if rate else "",
        "endpoint": "chat.completions",
        "stream": False,
        "status": "completed",
        "upstream_status": 200,
        "upstream_response_id": "",
        "reasoning_source": "reported",
        "flags": [],
        "raw_usage": None,
        "client_disconnected": False,
        "ttft_us": None,
        "latency_us": 1,
        "started_at": at,
        "finished_at": at,
        "cost_rate_id": None,
        "serving_cost_usd": None,
        "reasoning_cost_usd": None,
        **dict.fromkeys(LEDGER_COLUMNS, 0),
    }
    row.update(overrides)
    if rate is not None:
        row["cost_rate_id"] = rate.pk
        row["serving_cost_usd"], row["reasoning_cost_usd"] = serving_cost_at(rate, row)
    return row


def serving_cost_at(rate: ServingCostRate, counts: Mapping[str, int]) -> tuple[Decimal, Decimal]:
    """`serving_cost` (total, of which reasoning) at a stored rate, of the token counts in
    `counts` by ledger column (a usage row)."""
    return serving_cost(
        Rates(
            rate.input_usd,
            rate.cache_read_usd,
            rate.cache_write_usd,
            rate.output_usd,
            rate.reasoning_usd,
        ),
        input=counts["input_tokens"],
        cache_read=counts["cached_input_tokens"],
        cache_write=counts["cache_write_tokens"],
        output=counts["output_tokens"],
        reasoning=counts["reasoning_tokens"],
    )


def write_usage(
    api_key: ApiKey, started_at: datetime, rate: ServingCostRate | None = None, **tokens: int
) -> dict[str, Any]:
    row = usage_row(api_key, started_at=started_at, rate=rate, **tokens)
    usage_records_write([row])
    return row


def record_for(api_key: ApiKey, **overrides: Any) -> dict[str, Any]:
    """A usage record as the proxy hands it to the ledger writer (uncosted, started now)."""
    now = datetime.now(UTC)
    values = {
        "request_id": uuid.uuid4(),
        "tenant_id": api_key.tenant_id,
        "api_key_id": api_key.pk,
        "alias": "reasoner",
        "provider": "openai",
        "upstream_model": "sim",
        "accelerator": "",
        "endpoint": "chat.completions",
        "stream": False,
        "status": "completed",
        "upstream_status": 200,
        "upstream_response_id": "chatcmpl-1",
        "input_tokens": 10,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 50,
        "reasoning_source": "reported",
        "flags": [],
        "raw_usage": {"prompt_tokens": 10},
        "client_disconnected": False,
        "ttft_us": None,
        "latency_us": 1234,
        "started_at": now,
        "finished_at": now,
    }
    values.update(overrides)
    return values


def spool_append(spool_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Journal records to a spool file of their own, as a writer now gone left them."""
    spool = Spool(spool_dir)
    try:
        return spool.append(records)
    finally:
        spool.close()


# The oldest month the test suite writes usage in (its stories run in 2025 and 2026).
TEST_LEDGER_FROM = datetime(2025, 1, 1, tzinfo=UTC)


def ensure_test_partitions() -> None:
    """On a partitioned ledger (PostgreSQL), every month from TEST_LEDGER_FROM to the
    current one gets its partition, as an operator restoring history would make them
    (`partition_create`); migration 0013 already made the current month and those ahead.
    One contiguous range: the catalog guard (test_partitions) still sees any real gap."""
    month = TEST_LEDGER_FROM
    now = datetime.now(UTC)
    while month <= now:
        partition_create(month)
        month = month_day(month.year, month.month + 1)
    partitions_ensure(ahead_months=3)


def rollups_vs_raw_scan() -> dict[tuple[Any, ...], dict[str, Any]]:
    """Assert the rollup invariant per rollup key (`ROLLUP_KEY`, shards summed): plain
    sums = the unflagged records', flagged sums = the flagged records', requests and
    flagged requests their counts, unanswered requests the records (flagged or not)
    with an unanswered status, failed-over requests the records that failed over,
    last_record_id their highest id; a record without a provider account (route) stamp
    counts under account (route) 0. Returns the summed rollups."""
    from django.db.models import Count, F, Max, Q, Sum
    from django.db.models.functions import Coalesce, TruncHour

    from metering.ledger.rollups import FLAGGED_SUMS, ROLLUP_KEY, ROLLUP_SUMS
    from metering.models import UsageRecord, UsageRollup

    counted = (
        "requests",
        "flagged_requests",
        "unanswered_requests",
        "failed_over_requests",
        *ROLLUP_SUMS,
        *(f"flagged_{n}" for n in FLAGGED_SUMS),
    )
    rated = Q(flags=[])
    key = [k for k in ROLLUP_KEY if k not in ("provider_account_id", "route_id", "hour")]
    raw = (
        UsageRecord.objects.annotate(
            s_hour=TruncHour("started_at", tzinfo=UTC),
            s_account=Coalesce("provider_account_id", 0),
            s_route=Coalesce("route_id", 0),
        )
        .values(*key, "s_hour", "s_account", "s_route")
        .annotate(
            s_requests=Count("id", filter=rated),
            s_flagged_requests=Count("id", filter=~rated),
            # the statuses written out here, not read from the code under test
            s_unanswered_requests=Count("id", filter=Q(status__in=["upstream_error", "failed"])),
            s_failed_over_requests=Count("id", filter=Q(failed_over=True)),
            **{f"s_{n}": Sum(n, filter=rated, default=0) for n in ROLLUP_SUMS},
            **{f"s_flagged_{n}": Sum(n, filter=~rated, default=0) for n in FLAGGED_SUMS},
            s_last_record_id=Max("id"),
        )
    )
    renamed = {"s_hour": "hour", "s_account": "provider_account_id", "s_route": "route_id"}
    raw_rows = [{renamed.get(k, k.removeprefix("s_")): v for k, v in r.items()} for r in raw]
    summed = UsageRollup.objects.values(*ROLLUP_KEY).annotate(
        **{f"s_{n}": Sum(F(n)) for n in counted}, s_last_record_id=Max("last_record_id")
    )
    rollup_rows = [{k.removeprefix("s_"): v for k, v in r.items()} for r in summed]
    expected = {tuple(r[k] for k in ROLLUP_KEY): r for r in raw_rows}
    got = {tuple(r[k] for k in ROLLUP_KEY): r for r in rollup_rows}
    assert got.keys() == expected.keys()
    for group, row in expected.items():
        for name in (*counted, "last_record_id"):
            assert got[group][name] == row[name], (group, name, got[group][name], row[name])
    return got


def route_targets_vs_raw_scan() -> dict[tuple[Any, ...], dict[str, Any]]:
    """Assert the per-target invariant (decision 0117), shards summed: every
    RouteTargetHour count and sum, and every RouteLatencyBucket count, equals a scan of
    the usage records with a route id, computed here in Python (not by the SQL under
    test): per (route_id, UTC hour, effort or "") attempts, answered (completed or
    incomplete), failed over, upstream 5xx and 429, failed, incomplete, the token sums,
    serving cost, spend (None adds 0), latency sum; latency and TTFT (when known)
    bucketed by LATENCY_BUCKET_EDGES_US (bucket i: below edge i, at or above edge i-1).
    Returns the summed RouteTargetHour rows."""
    from bisect import bisect_right
    from collections import defaultdict

    from django.db.models import Sum

    from metering.models import (
        LATENCY_BUCKET_EDGES_US,
        RouteLatencyBucket,
        RouteTargetHour,
        UsageRecord,
    )

    counted = ("attempts", "answered", "failed_over", "status_5xx", "status_429")
    counted += ("failed", "incomplete", *LEDGER_COLUMNS, "serving_cost_usd", "spend_usd")
    counted += ("latency_us_sum",)
    expected: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: dict.fromkeys(counted, 0))
    buckets: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in UsageRecord.objects.filter(route_id__isnull=False):
        hour = r.started_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (r.route_id, hour, r.reasoning_effort or "")
        row = expected[key]
        row["attempts"] += 1
        row["answered"] += r.status in ("completed", "incomplete")
        row["failed_over"] += bool(r.failed_over)
        row["status_5xx"] += r.upstream_status >= 500
        row["status_429"] += r.upstream_status == 429
        row["failed"] += r.status == "failed"
        row["incomplete"] += r.status == "incomplete"
        for name in LEDGER_COLUMNS:
            row[name] += getattr(r, name)
        row["serving_cost_usd"] += r.serving_cost_usd or 0
        row["spend_usd"] += r.spend_usd or 0
        row["latency_us_sum"] += r.latency_us
        buckets[(*key, "latency", bisect_right(LATENCY_BUCKET_EDGES_US, r.latency_us))] += 1
        if r.ttft_us is not None:
            buckets[(*key, "ttft", bisect_right(LATENCY_BUCKET_EDGES_US, r.ttft_us))] += 1
    summed = RouteTargetHour.objects.values("route_id", "hour", "reasoning_effort").annotate(
        **{f"s_{n}": Sum(n) for n in counted}
    )
    got = {
        (r["route_id"], r["hour"], r["reasoning_effort"]): {n: r[f"s_{n}"] for n in counted}
        for r in summed
    }
    assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
    for key, row in expected.items():
        for name in counted:
            assert got[key][name] == row[name], (key, name, got[key][name], row[name])
    bucket_rows = RouteLatencyBucket.objects.values(
        "route_id", "hour", "reasoning_effort", "kind", "bucket"
    ).annotate(s=Sum("count"))
    got_buckets = {
        (b["route_id"], b["hour"], b["reasoning_effort"], b["kind"], b["bucket"]): b["s"]
        for b in bucket_rows
    }
    assert got_buckets == dict(buckets)
    return got
