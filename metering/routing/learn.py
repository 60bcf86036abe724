"""Learning what a call to each target plausibly spends, per reasoning effort: means per
answered attempt over the last RECKON_ROUTE_LEARN_DAYS days of `RouteTargetHour` (sums,
not raw records), cache shares from the input classes, and the median latency from the
`latency` histograms. The `cheapest` policy ranks targets by these
(`metering.routing.state`). Cost is linear in tokens, so the mean is the right statistic
(holds keep their p99).

Run hourly (metering.tasks.learn_route_expectations); each run replaces the table's view
of the window under an advisory lock, so running it twice changes nothing.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from metering.models import (
    LATENCY_BUCKET_EDGES_US,
    Route,
    RouteExpectation,
    RouteLatencyBucket,
    RouteTargetHour,
)

_LOCK_ID = 0x726B_726F_7574  # "rkrout": this module's advisory lock
_PLACES = Decimal("0.0001")  # RouteExpectation's means keep 4 decimal places

_SUMS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
_MEANS = (
    "mean_input_tokens",
    "mean_cached_input_tokens",
    "mean_cache_write_tokens",
    "mean_output_tokens",
    "mean_reasoning_tokens",
)


def median_upper_edge_ms(counts: dict[int, int]) -> int | None:
    """The upper edge (ms, rounded up) of the histogram bucket holding the median; the
    overflow bucket reads as the last edge. None for an empty histogram."""
    total = sum(counts.values())
    if total <= 0:
        return None
    half = (total + 1) // 2
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= half:
            edge = LATENCY_BUCKET_EDGES_US[min(bucket, len(LATENCY_BUCKET_EDGES_US) - 1)]
            return -(-edge // 1000)
    return None  # not reached: seen ends at total


@transaction.atomic
def learn_route_expectations(now: datetime | None = None) -> int:
    """Recompute every target's expectations from the window ending at `now`; returns
    how many (route, effort) rows were written."""
    until = now or timezone.now()
    since = until - timedelta(days=settings.RECKON_ROUTE_LEARN_DAYS)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Overlapping runs (a retried task beside a late one) take turns.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
    sums = (
        RouteTargetHour.objects.filter(hour__gte=since, hour__lt=until, route_id__gt=0)
        .values("route_id", "reasoning_effort")
        .annotate(n=Sum("answered"), **{f: Sum(f) for f in _SUMS})
        .order_by()
    )
    histograms: dict[tuple[int, str], dict[int, int]] = defaultdict(dict)
    for bucket in (
        RouteLatencyBucket.objects.filter(
            hour__gte=since, hour__lt=until, kind=RouteLatencyBucket.Kind.LATENCY, route_id__gt=0
        )
        .values("route_id", "reasoning_effort", "bucket")
        .annotate(n=Sum("count"))
        .order_by()
    ):
        key = (bucket["route_id"], bucket["reasoning_effort"])
        histograms[key][bucket["bucket"]] = bucket["n"]
    routes = set(Route.objects.values_list("pk", flat=True))  # a stamp may name a route gone
    learned: list[RouteExpectation] = []
    for row in sums:
        answered = row["n"] or 0
        if answered <= 0 or row["route_id"] not in routes:
            continue
        key = (row["route_id"], row["reasoning_effort"])
        means = {
            mean: (Decimal(row[total] or 0) / answered).quantize(_PLACES, ROUND_HALF_UP)
            for mean, total in zip(_MEANS, _SUMS, strict=True)
        }
        learned.append(
            RouteExpectation(
                route_id=row["route_id"],
                reasoning_effort=row["reasoning_effort"],
                p50_latency_ms=median_upper_edge_ms(histograms.get(key, {})),
                samples=answered,
                computed_at=until,
                **means,
            )
        )
    keep = {(e.route_id, e.reasoning_effort) for e in learned}
    stale = [
        pk
        for pk, rid, effort in RouteExpectation.objects.values_list(
            "pk", "route_id", "reasoning_effort"
        )
        if (rid, effort) not in keep
    ]
    RouteExpectation.objects.filter(pk__in=stale).delete()
    RouteExpectation.objects.bulk_create(
        learned,
        update_conflicts=True,
        unique_fields=["route", "reasoning_effort"],
        update_fields=[*_MEANS, "p50_latency_ms", "samples", "computed_at"],
    )
    return len(learned)
