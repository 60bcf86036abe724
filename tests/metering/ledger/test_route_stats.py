"""Per-target statistics (decision 0117): RouteTargetHour and RouteLatencyBucket fold in
the ledger's own write paths (the PostgreSQL batch statement, the ORM path of SQLite and
spool replay) from the records actually inserted, with a route id only; they equal a raw
scan of the records (`tests.usage_helpers.route_targets_vs_raw_scan`), a replay adds
nothing, and the shard fold merges closed hours into shard 0 keeping every sum."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import Sum

from metering.ledger.orm import usage_records_write
from metering.ledger.postgres import pg_conninfo, pg_insert_statement
from metering.ledger.rollups import (
    latency_bucket_of,
    latency_bucket_sql,
    route_shards_fold,
    usage_rollup_shards_fold,
)
from metering.models import (
    LATENCY_BUCKET_EDGES_US,
    RouteLatencyBucket,
    RouteTargetHour,
    UsageRollup,
)
from tests.factories import ApiKeyFactory
from tests.sqlite_helpers import run_on_sqlite
from tests.usage_helpers import record_for, rollups_vs_raw_scan, route_targets_vs_raw_scan

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="write shards exist on PostgreSQL only"
)
HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)


def routed(key: Any, at: datetime, i: int) -> list[dict[str, Any]]:
    """One call that failed over from target 7 (a 503) to target 8, and one that target 8
    answered cut (incomplete), an unrouted call, a 429 on target 7 with no effort."""
    first = record_for(
        key,
        started_at=at,
        finished_at=at,
        route_id=7,
        attempt=1,
        failed_over=True,
        route_policy="fallback",
        route_reason="priority",
        reasoning_effort="high",
        status="upstream_error",
        upstream_status=503,
        input_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        latency_us=40_000 + i,
        spend_usd=Decimal(0),
        serving_cost_usd=Decimal(0),
    )
    second = record_for(
        key,
        started_at=at,
        finished_at=at,
        route_id=8,
        attempt=2,
        failed_over=False,
        route_policy="fallback",
        route_reason="failover",
        reasoning_effort="high",
        input_tokens=100 + i,
        cached_input_tokens=10,
        cache_write_tokens=1,
        output_tokens=20,
        reasoning_tokens=300 + i,
        latency_us=2_000_000 + 1000 * i,
        ttft_us=LATENCY_BUCKET_EDGES_US[3],  # exactly an edge: the bucket above it
        serving_cost_usd=Decimal("0.000001234567890123456789"),
        spend_usd=Decimal("0.0025"),
    )
    cut = record_for(
        key,
        started_at=at,
        finished_at=at,
        route_id=8,
        attempt=1,
        failed_over=False,
        reasoning_effort="low",
        status="incomplete",
        flags=["client_cut"],
        latency_us=10**10,  # above the last edge
        ttft_us=1,
        spend_usd=None,
    )
    throttled = record_for(
        key,
        started_at=at,
        finished_at=at,
        route_id=7,
        attempt=1,
        failed_over=False,
        reasoning_effort="",
        status="upstream_error",
        upstream_status=429,
        latency_us=5,
    )
    return [first, second, cut, throttled, record_for(key, started_at=at, finished_at=at)]


def connect(autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(pg_conninfo(connection.settings_dict), autocommit=autocommit)


def pg_write(conn: psycopg.Connection, rows: list[dict[str, Any]], shard: int) -> None:
    with psycopg.RawCursor(conn) as cursor:
        cursor.execute(*pg_insert_statement(rows, [], shard))


def test_the_bucket_rule_matches_its_edges() -> None:
    edges = LATENCY_BUCKET_EDGES_US
    assert len(edges) == 28 and edges[0] == 50_000
    assert latency_bucket_of(0) == 0
    assert latency_bucket_of(edges[0] - 1) == 0
    assert latency_bucket_of(edges[0]) == 1
    assert latency_bucket_of(edges[-1] - 1) == len(edges) - 1
    assert latency_bucket_of(edges[-1]) == len(edges)


@pytest.mark.django_db
def test_the_database_buckets_every_edge_as_the_rule_does() -> None:
    values = [0, 1, *LATENCY_BUCKET_EDGES_US, *(e - 1 for e in LATENCY_BUCKET_EDGES_US), 10**12]
    with connection.cursor() as cursor:
        for value in values:
            cursor.execute(
                f"SELECT {latency_bucket_sql('v', connection.vendor)} FROM (SELECT %s AS v) AS t",  # noqa: S608
                [value],
            )
            assert cursor.fetchone()[0] == latency_bucket_of(value), value


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_batch_statement_folds_targets_per_shard_and_a_replay_adds_nothing() -> None:
    key = ApiKeyFactory()
    batches = []
    with connect() as conn:
        for shard in range(3):
            for hours in (0, 1, 30):
                rows = routed(key, HOUR + timedelta(hours=hours, minutes=shard), shard)
                pg_write(conn, rows, shard)
                batches.append((rows, shard))
        before = route_targets_vs_raw_scan()
        counts = (RouteTargetHour.objects.count(), RouteLatencyBucket.objects.count())
        for rows, shard in batches:
            pg_write(conn, rows, (shard + 1) % 3)  # a replay, even on another connection
    assert route_targets_vs_raw_scan() == before
    assert (RouteTargetHour.objects.count(), RouteLatencyBucket.objects.count()) == counts
    rollups_vs_raw_scan()
    # per (target, hour, effort) and writer shard: 7/high, 7/"", 8/high, 8/low
    assert counts[0] == 4 * 3 * 3
    hour0 = RouteTargetHour.objects.filter(hour=HOUR)
    assert set(hour0.values_list("shard", flat=True)) == {0, 1, 2}
    high7 = hour0.filter(route_id=7, reasoning_effort="high").aggregate(
        a=Sum("attempts"), f=Sum("failed_over"), s=Sum("status_5xx"), answered=Sum("answered")
    )
    assert high7 == {"a": 3, "f": 3, "s": 3, "answered": 0}
    low8 = hour0.get(route_id=8, reasoning_effort="low", shard=0)
    assert (low8.answered, low8.incomplete, low8.spend_usd) == (1, 1, Decimal(0))
    ttft = RouteLatencyBucket.objects.filter(hour=HOUR, route_id=8, kind="ttft")
    assert set(ttft.values_list("bucket", flat=True)) == {0, 4}
    assert RouteLatencyBucket.objects.filter(kind="latency", bucket=28).exists()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_shard_fold_merges_closed_target_hours_keeping_every_sum() -> None:
    key = ApiKeyFactory()
    with connect() as conn:
        for shard in range(3):
            for hours in (0, 1, 30):
                pg_write(
                    conn, routed(key, HOUR + timedelta(hours=hours, minutes=shard), shard), shard
                )
    before = route_targets_vs_raw_scan()
    rollups = rollups_vs_raw_scan()
    closed = HOUR + timedelta(hours=2)
    buckets_above = RouteLatencyBucket.objects.filter(hour__lt=closed, shard__gt=0).count()
    assert usage_rollup_shards_fold(before=closed, batch_size=5) > 0  # rollups, then targets
    assert route_targets_vs_raw_scan() == before
    assert rollups_vs_raw_scan() == rollups
    assert set(RouteTargetHour.objects.filter(hour__lt=closed).values_list("shard", flat=True)) == {
        0
    }
    assert set(
        RouteLatencyBucket.objects.filter(hour__lt=closed).values_list("shard", flat=True)
    ) == {0}
    open_hour = RouteTargetHour.objects.filter(hour=HOUR + timedelta(hours=30))
    assert set(open_hour.values_list("shard", flat=True)) == {0, 1, 2}
    assert buckets_above > 0
    assert route_shards_fold(before=closed) == (0, 0)  # idempotent
    assert route_targets_vs_raw_scan() == before


@pytest.mark.django_db(transaction=True)
def test_the_orm_path_folds_targets_into_shard_0_and_a_replay_adds_nothing() -> None:
    """The spool replay's path on PostgreSQL (and SQLite's only one)."""
    key = ApiKeyFactory()
    rows = [r for i in range(3) for r in routed(key, HOUR + timedelta(minutes=i), i)]
    assert usage_records_write(rows) == len(rows)
    before = route_targets_vs_raw_scan()
    assert usage_records_write(rows) == 0
    assert route_targets_vs_raw_scan() == before
    assert set(RouteTargetHour.objects.values_list("shard", flat=True)) == {0}
    rollups_vs_raw_scan()
    row = RouteTargetHour.objects.get(route_id=8, reasoning_effort="high")
    assert (row.attempts, row.answered, row.input_tokens, row.reasoning_tokens) == (
        3,
        3,
        100 + 101 + 102,
        300 + 301 + 302,
    )
    assert row.serving_cost_usd == 3 * Decimal("0.000001234567890123456789")
    assert row.latency_us_sum == 3 * 2_000_000 + 1000 * (0 + 1 + 2)
    assert UsageRollup.objects.aggregate(f=Sum("failed_over_requests"))["f"] == 3


SQLITE_SCRIPT = """
import django

django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
from datetime import timedelta
from decimal import Decimal

from metering.ledger.orm import usage_records_write
from metering.models import ApiKey, RouteTargetHour, Tenant
from tests.metering.ledger.test_route_stats import HOUR, routed
from tests.usage_helpers import route_targets_vs_raw_scan, rollups_vs_raw_scan

tenant = Tenant.objects.create(name="t")
key = ApiKey.objects.create(tenant=tenant, prefix="k", key_hash="k")
rows = [r for i in range(4) for r in routed(key, HOUR + timedelta(minutes=29 * i), i)]
for r in rows:  # SQLite keeps decimals as binary floats: amounts a float holds exactly
    if r.get("serving_cost_usd"):
        r["serving_cost_usd"] = Decimal("0.125")
assert usage_records_write(rows[:12]) == 12
assert usage_records_write(rows) == len(rows) - 12  # the first 12 replayed: nothing added
summed = route_targets_vs_raw_scan()
rollups_vs_raw_scan()
assert len(summed) == 4 * 2, sorted(summed)  # two hours
assert RouteTargetHour.objects.get(
    route_id=8, reasoning_effort="high", hour=HOUR
).attempts == 3
print("ok", len(summed))
"""


def test_targets_fold_on_sqlite(tmp_path: Path) -> None:
    stdout = run_on_sqlite(SQLITE_SCRIPT, tmp_path, migrated=True)
    assert stdout.startswith("ok 8")
