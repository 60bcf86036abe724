"""Learning expectations per target and effort from RouteTargetHour: exact means over
answered attempts, summed over shards and hours of the window only, cache shares, the
median latency's bucket edge; idempotent; overlapping runs take turns on the lock."""

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.test import override_settings

from metering.models import (
    LATENCY_BUCKET_EDGES_US,
    RouteExpectation,
    RouteLatencyBucket,
    RouteTargetHour,
)
from metering.routing.learn import _LOCK_ID, learn_route_expectations, median_upper_edge_ms
from metering.tasks import learn_route_expectations as learn_task
from tests.factories import RouteFactory

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
HOUR = NOW.replace(minute=0)


def hour_row(route_id: int, hour: datetime, effort: str = "", shard: int = 0, **sums: int) -> None:
    RouteTargetHour.objects.create(
        route_id=route_id, hour=hour, reasoning_effort=effort, shard=shard, **sums
    )


def buckets(
    route_id: int, hour: datetime, effort: str, counts: dict[int, int], kind: str = "latency"
) -> None:
    for bucket, count in counts.items():
        RouteLatencyBucket.objects.create(
            route_id=route_id,
            hour=hour,
            reasoning_effort=effort,
            kind=kind,
            bucket=bucket,
            count=count,
        )


def test_median_upper_edge() -> None:
    assert median_upper_edge_ms({}) is None
    assert median_upper_edge_ms({0: 5}) == 50  # below 50 ms
    # 3 + 4 of 9: the 5th value is in bucket 2 (edge 100,000 us = 100 ms).
    assert median_upper_edge_ms({1: 3, 2: 4, 5: 2}) == 100
    assert median_upper_edge_ms({1: 1, 3: 1}) == 71  # 70,711 us: rounded up
    overflow = len(LATENCY_BUCKET_EDGES_US)
    assert median_upper_edge_ms({overflow: 1}) == -(-LATENCY_BUCKET_EDGES_US[-1] // 1000)


@pytest.mark.django_db
@override_settings(RECKON_ROUTE_LEARN_DAYS=7)
def test_exact_means_from_hour_sums() -> None:
    a = RouteFactory(alias="routed", name="a")
    b = RouteFactory(alias="routed", name="b")
    # a, high: two shards of one hour + an earlier hour = 4 answered of 6 attempts.
    hour_row(a.pk, HOUR, "high", 0, attempts=2, answered=1, input_tokens=100, cached_input_tokens=300,
             cache_write_tokens=0, output_tokens=50, reasoning_tokens=1000)  # fmt: skip
    hour_row(a.pk, HOUR, "high", 3, attempts=2, answered=1, input_tokens=200, output_tokens=70,
             reasoning_tokens=2001, cache_write_tokens=40)  # fmt: skip
    hour_row(a.pk, HOUR - timedelta(days=6), "high", 0, attempts=2, answered=2, input_tokens=1,
             output_tokens=1, reasoning_tokens=1)  # fmt: skip
    # Outside the window: before it, and at its end (half-open [since, until)).
    hour_row(a.pk, HOUR - timedelta(days=8), "high", 0, attempts=9, answered=9, output_tokens=10**6)
    hour_row(
        a.pk, NOW + timedelta(minutes=30), "high", 0, attempts=9, answered=9, output_tokens=10**6
    )
    # a, no effort; b, low; b, an hour with no answered attempt only.
    hour_row(a.pk, HOUR, "", 0, attempts=3, answered=3, input_tokens=30, output_tokens=3)
    hour_row(b.pk, HOUR, "low", 0, attempts=1, answered=1, output_tokens=7)
    hour_row(b.pk, HOUR, "medium", 0, attempts=4, answered=0, status_5xx=4)
    # A route id no Route has (stamped, then deleted): skipped.
    hour_row(999_999, HOUR, "", 0, attempts=1, answered=1, output_tokens=1)
    buckets(a.pk, HOUR, "high", {3: 1, 6: 2})
    buckets(a.pk, HOUR - timedelta(hours=1), "high", {6: 1, 9: 1})  # added across hours
    buckets(a.pk, HOUR, "high", {0: 50}, kind="ttft")  # not latency

    assert learn_route_expectations(NOW) == 3
    got = {(e.route_id, e.reasoning_effort): e for e in RouteExpectation.objects.all()}
    assert set(got) == {(a.pk, "high"), (a.pk, ""), (b.pk, "low")}
    high = got[(a.pk, "high")]
    assert high.samples == 4
    assert high.mean_input_tokens == Decimal("75.2500")  # 301 / 4
    assert high.mean_cached_input_tokens == Decimal("75.0000")
    assert high.mean_cache_write_tokens == Decimal("10.0000")
    assert high.mean_output_tokens == Decimal("30.2500")  # 121 / 4
    assert high.mean_reasoning_tokens == Decimal("750.5000")  # 3002 / 4
    # latency counts 1, 3, 1 in buckets 3, 6, 9: the median (3rd of 5) is in bucket 6.
    assert high.p50_latency_ms == -(-LATENCY_BUCKET_EDGES_US[6] // 1000) == 400
    assert high.computed_at == NOW
    assert got[(a.pk, "")].mean_output_tokens == Decimal("1.0000")
    assert got[(a.pk, "")].p50_latency_ms is None
    assert got[(b.pk, "low")].mean_output_tokens == Decimal("7.0000")

    # Idempotent: the same again.
    before = list(RouteExpectation.objects.order_by("pk").values())
    assert learn_route_expectations(NOW) == 3
    assert list(RouteExpectation.objects.order_by("pk").values()) == before
    # A later window holds only the hour after NOW: what is no longer learned is dropped.
    later = NOW + timedelta(days=7)
    assert learn_task(as_of=later.isoformat()) == 1
    only = RouteExpectation.objects.get()
    assert (only.route_id, only.reasoning_effort, only.samples) == (a.pk, "high", 9)
    assert only.mean_output_tokens == Decimal("111111.1111")
    assert learn_task(as_of=(later + timedelta(days=7)).isoformat()) == 0
    assert RouteExpectation.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_run_waits_for_the_lock() -> None:
    a = RouteFactory(alias="locked", name="a")
    hour_row(a.pk, HOUR, "", 0, attempts=1, answered=1, output_tokens=5)
    holder = connections.create_connection("default")
    done: list[int] = []
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_LOCK_ID])

        def run() -> None:
            try:
                done.append(learn_route_expectations(NOW))
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        # Wait until the run is seen waiting on the lock in pg_locks, then release it.
        with holder.cursor() as cursor:
            for _ in range(500):
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    # this database's only: another test worker's locks are not this run's
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the run never waited on the lock")
            assert done == []
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_ID])
        thread.join(30)
        assert done == [1]
        assert RouteExpectation.objects.get().mean_output_tokens == Decimal("5.0000")
    finally:
        holder.close()
