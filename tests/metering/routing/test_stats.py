"""Per-target statistics (metering.routing.stats) from RouteTargetHour and
RouteLatencyBucket rows inserted directly, several shards and hours each."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.models import LATENCY_BUCKET_EDGES_US, RouteLatencyBucket, RouteTargetHour
from metering.routing.stats import latency_quantiles, quantile_ms, target_hours, target_stats

H0 = datetime(2026, 11, 3, 10, tzinfo=UTC)
START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
LATENCY, TTFT = RouteLatencyBucket.Kind.LATENCY, RouteLatencyBucket.Kind.TTFT


def hour(route_id: int, at: datetime, effort: str, shard: int = 0, **values) -> None:  # type: ignore[no-untyped-def]
    RouteTargetHour.objects.create(
        route_id=route_id, hour=at, reasoning_effort=effort, shard=shard, **values
    )


def bucket(
    route_id: int, at: datetime, effort: str, kind: str, index: int, count: int, shard: int = 0
) -> None:  # noqa: E501
    RouteLatencyBucket.objects.create(
        route_id=route_id,
        hour=at,
        reasoning_effort=effort,
        kind=kind,
        bucket=index,
        shard=shard,
        count=count,
    )


@pytest.fixture
def world() -> None:
    hour(
        1,
        H0,
        "low",
        attempts=3,
        answered=2,
        failed=1,
        reasoning_tokens=100,
        output_tokens=10,
        serving_cost_usd=Decimal("0.000300000000000000000001"),
        spend_usd=Decimal("0.01"),
        latency_us_sum=1_000_000,
    )
    hour(
        1,
        H0,
        "low",
        shard=1,
        attempts=1,
        answered=1,
        reasoning_tokens=50,
        output_tokens=5,
        serving_cost_usd=Decimal("0.0001"),
        spend_usd=Decimal("0.002"),
        latency_us_sum=500_000,
    )
    hour(
        1,
        H0 + timedelta(hours=1),
        "high",
        attempts=2,
        answered=1,
        status_5xx=1,
        failed_over=1,
        reasoning_tokens=900,
        output_tokens=30,
        input_tokens=40,
        serving_cost_usd=Decimal("0.0009"),
        spend_usd=Decimal("0.03"),
        latency_us_sum=700_000,
    )
    hour(1, END, "low", attempts=100, answered=100)  # next month: outside
    hour(2, H0, "", attempts=4, answered=4, status_429=0, incomplete=1)
    hour(3, H0, "", attempts=7, answered=7)  # not asked for
    bucket(1, H0, "low", LATENCY, 2, 3)
    bucket(1, H0, "low", LATENCY, 6, 1, shard=1)
    bucket(1, H0 + timedelta(hours=1), "high", LATENCY, 4, 2)
    bucket(1, END, "low", LATENCY, 27, 50)  # outside
    bucket(1, H0, "low", TTFT, 0, 4)
    bucket(2, H0, "", LATENCY, len(LATENCY_BUCKET_EDGES_US), 1)  # overflow
    bucket(2, H0, "", LATENCY, 1, 3)


def test_quantile_is_the_upper_edge_of_the_bucket_holding_the_rank() -> None:
    assert LATENCY_BUCKET_EDGES_US[2] == 100_000 and LATENCY_BUCKET_EDGES_US[6] == 400_000
    counts = {2: 3, 4: 2, 6: 1}
    assert quantile_ms(counts, 0.5) == 100  # rank 3
    assert quantile_ms(counts, 0.51) == 200  # rank 4
    assert quantile_ms(counts, 0.99) == 400  # rank 6
    assert quantile_ms({}, 0.5) is None
    assert quantile_ms({0: 1}, 0.5) == 50
    assert quantile_ms({len(LATENCY_BUCKET_EDGES_US): 1}, 0.5) is None


@pytest.mark.django_db
def test_target_hours_sum_shards_per_hour_and_effort(world: None) -> None:
    rows = target_hours([1, 2], START, END)
    assert [(r["route_id"], r["hour"], r["reasoning_effort"]) for r in rows] == [
        (1, H0, "low"),
        (1, H0 + timedelta(hours=1), "high"),
        (2, H0, ""),
    ]
    low = rows[0]
    assert (low["attempts"], low["answered"], low["failed"], low["reasoning_tokens"]) == (
        4,
        3,
        1,
        150,
    )
    assert low["serving_cost_usd"] == Decimal("0.000400000000000000000001")
    assert low["spend_usd"] == Decimal("0.012")
    assert rows[2]["status_429"] == 0 and rows[2]["incomplete"] == 1
    assert target_hours([], START, END) == []


@pytest.mark.django_db
def test_latency_quantiles_per_effort_and_across(world: None) -> None:
    quantiles = latency_quantiles([1, 2], START, END, LATENCY)
    assert quantiles == {
        (1, "low"): {0.5: 100, 0.99: 400},
        (1, "high"): {0.5: 200, 0.99: 200},
        (1, None): {0.5: 100, 0.99: 400},
        (2, ""): {0.5: 70, 0.99: None},
        (2, None): {0.5: 70, 0.99: None},
    }
    assert latency_quantiles([1], START, END, TTFT) == {
        (1, "low"): {0.5: 50, 0.99: 50},
        (1, None): {0.5: 50, 0.99: 50},
    }


@pytest.mark.django_db
def test_target_stats(world: None) -> None:
    stats = target_stats([1, 2, 99], START, END)
    one = stats[1]
    assert (one.attempts, one.answered, one.failed_over, one.status_5xx, one.failed) == (
        6,
        4,
        1,
        1,
        1,
    )
    assert one.error_rate == Decimal(2) / 6
    assert one.serving_cost_usd == Decimal("0.001300000000000000000001")
    assert one.cost_per_call == Decimal("0.001300000000000000000001") / 4
    assert one.spend_usd == Decimal("0.042")
    assert one.tokens["reasoning_tokens"] == 1050 and one.tokens["input_tokens"] == 40
    assert one.latency_ms == {0.5: 100, 0.99: 400} and one.ttft_ms == {0.5: 50, 0.99: 50}
    assert one.mean_latency_ms == Decimal("366.6666666666666666666666667")
    high, low = one.efforts
    assert (high.effort, high.answered, high.reasoning_per_call) == ("high", 1, Decimal(900))
    assert (low.effort, low.answered, low.reasoning_per_call) == ("low", 3, Decimal(50))
    assert low.cost_per_call == Decimal("0.000400000000000000000001") / 3
    empty = stats[99]
    assert empty.attempts == 0 and empty.error_rate is None and empty.cost_per_call is None
    assert empty.latency_ms == {0.5: None, 0.99: None} and empty.efforts == ()
    assert stats[2].latency_ms == {0.5: 70, 0.99: None}


@pytest.mark.django_db
def test_stats_of_records_written_through_the_ledger() -> None:
    """The ledger's own write path folds RouteTargetHour and the histograms; the stats
    read them back: 3 attempts on target 7 (one failed over with a 503), 1 on target 8."""
    from metering.ledger.orm import usage_records_write
    from tests.factories import ApiKeyFactory
    from tests.usage_helpers import usage_row

    key = ApiKeyFactory()
    at = H0 + timedelta(minutes=5)
    usage_records_write(
        [
            usage_row(
                key,
                started_at=at,
                route_id=7,
                reasoning_effort="high",
                output_tokens=10,
                reasoning_tokens=300,
                latency_us=120_000,
                ttft_us=60_000,
            ),
            usage_row(
                key,
                started_at=at,
                route_id=7,
                reasoning_effort="high",
                output_tokens=20,
                reasoning_tokens=500,
                latency_us=900_000,
                ttft_us=80_000,
            ),
            usage_row(
                key,
                started_at=at,
                route_id=7,
                reasoning_effort="high",
                attempt=0,
                status="upstream_error",
                upstream_status=503,
                failed_over=True,
                latency_us=30_000,
            ),
            usage_row(
                key,
                started_at=at,
                route_id=8,
                reasoning_effort="low",
                output_tokens=5,
                latency_us=10_000,
            ),
        ]
    )
    stats = target_stats([7, 8], START, END)
    seven = stats[7]
    assert (seven.attempts, seven.answered, seven.failed_over, seven.status_5xx) == (3, 2, 1, 1)
    assert seven.error_rate == Decimal(1) / 3
    (high,) = seven.efforts
    assert (high.effort, high.reasoning_per_call) == ("high", Decimal(400))
    # latency buckets: 30 ms -> [0] (50), 120 ms -> [3] (141), 900 ms -> [9] (1131)
    assert seven.latency_ms == {0.5: 141, 0.99: 1131}
    assert seven.ttft_ms == {0.5: 70, 0.99: 100}  # 60 ms -> [1] (70), 80 ms -> [2] (100)
    assert stats[8].answered == 1 and stats[8].latency_ms == {0.5: 50, 0.99: 50}
