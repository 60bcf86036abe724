"""Per-target statistics of routed calls (decision 0117): what the routing API, the alias
admin, the what-if re-route and the expectation learner read.

Reads `RouteTargetHour` and `RouteLatencyBucket` only (never raw records), summed over
shards, over whole UTC hours in [start, end). Callers that report run inside
`config.db_router.reporting_reads()`: the queries here go to the replica then.

Quantiles are read off the log histograms as the upper edge of the bucket holding the
rank ceil(q x count) (at most x sqrt(2) high); a quantile that falls in the overflow
bucket (beyond the last edge, about 819 s) is None. Ratios and means are exact Decimals;
whoever displays them rounds.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from metering.models import LATENCY_BUCKET_EDGES_US, RouteLatencyBucket, RouteTargetHour

# The summed columns of RouteTargetHour, as keys of `target_hours` rows.
COUNTS = (
    "attempts",
    "answered",
    "failed_over",
    "status_5xx",
    "status_429",
    "failed",
    "incomplete",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "latency_us_sum",
)
AMOUNTS = ("serving_cost_usd", "spend_usd")
DEFAULT_QUANTILES = (0.5, 0.99)


def target_hours(route_ids: Iterable[int], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """RouteTargetHour rows of the targets in [start, end), summed over shards: one dict
    per (route_id, hour, reasoning_effort) with every count and amount (0 when none),
    ordered by those three."""
    rows = (
        RouteTargetHour.objects.filter(route_id__in=list(route_ids), hour__gte=start, hour__lt=end)
        .values("route_id", "hour", "reasoning_effort")
        .annotate(**{name: Sum(name) for name in (*COUNTS, *AMOUNTS)})
        .order_by("route_id", "hour", "reasoning_effort")
    )
    out = []
    for row in rows:
        for name in COUNTS:
            row[name] = int(row[name] or 0)
        for name in AMOUNTS:
            row[name] = row[name] or Decimal(0)
        out.append(row)
    return out


def quantile_ms(counts: dict[int, int], q: float) -> int | None:
    """The upper edge (ms) of the bucket holding rank ceil(q x total) of a histogram
    {bucket index: count}; None when empty or in the overflow bucket. Pure."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(Decimal(str(q)) * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            if bucket >= len(LATENCY_BUCKET_EDGES_US):
                return None
            return LATENCY_BUCKET_EDGES_US[bucket] // 1000
    return None  # unreachable: the last bucket reaches the total


def latency_quantiles(
    route_ids: Iterable[int],
    start: datetime,
    end: datetime,
    kind: str,
    qs: tuple[float, ...] = DEFAULT_QUANTILES,
) -> dict[tuple[int, str | None], dict[float, int | None]]:
    """Quantiles (ms) of the targets' latency or TTFT histograms (`kind`: a
    RouteLatencyBucket.Kind) over [start, end): keyed (route_id, effort) per effort and
    (route_id, None) across efforts. Targets with no histogram counts are absent."""
    rows = (
        RouteLatencyBucket.objects.filter(
            route_id__in=list(route_ids), hour__gte=start, hour__lt=end, kind=kind
        )
        .values("route_id", "reasoning_effort", "bucket")
        .annotate(n=Sum("count"))
        .order_by()
    )
    histograms: dict[tuple[int, str | None], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        n = int(row["n"] or 0)
        if n <= 0:
            continue
        histograms[(row["route_id"], row["reasoning_effort"])][row["bucket"]] += n
        histograms[(row["route_id"], None)][row["bucket"]] += n
    return {key: {q: quantile_ms(counts, q) for q in qs} for key, counts in histograms.items()}


def _ratio(numerator: int | Decimal, denominator: int) -> Decimal | None:
    return None if denominator == 0 else Decimal(numerator) / denominator


@dataclass(frozen=True)
class EffortStats:
    """One target's figures for one reasoning effort ("" none)."""

    effort: str
    attempts: int
    answered: int
    output_tokens: int
    reasoning_tokens: int
    serving_cost_usd: Decimal

    @property
    def reasoning_per_call(self) -> Decimal | None:
        """Reasoning tokens per answered attempt (failed ones carry none)."""
        return _ratio(self.reasoning_tokens, self.answered)

    @property
    def cost_per_call(self) -> Decimal | None:
        return _ratio(self.serving_cost_usd, self.answered)


@dataclass(frozen=True)
class TargetStats:
    """One target over a period. Attempts include failed ones; a client call served
    after failover counts one failed-over attempt here and one answered on another target."""

    route_id: int
    attempts: int
    answered: int
    failed_over: int
    status_5xx: int
    status_429: int
    failed: int
    incomplete: int
    tokens: dict[str, int]  # ledger column -> tokens
    serving_cost_usd: Decimal  # exact, stamped on the records
    spend_usd: Decimal  # at the alias's list prices (what limits count)
    latency_us_sum: int
    latency_ms: dict[float, int | None]  # quantile -> ms (upper bucket edge)
    ttft_ms: dict[float, int | None]
    efforts: tuple[EffortStats, ...]

    @property
    def error_rate(self) -> Decimal | None:
        """Failed attempts (not answered: upstream errors and failures) / attempts."""
        return _ratio(self.attempts - self.answered, self.attempts)

    @property
    def cost_per_call(self) -> Decimal | None:
        """Serving cost per answered attempt."""
        return _ratio(self.serving_cost_usd, self.answered)

    @property
    def mean_latency_ms(self) -> Decimal | None:
        return _ratio(Decimal(self.latency_us_sum) / 1000, self.attempts)


TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def target_stats(
    route_ids: Iterable[int],
    start: datetime,
    end: datetime,
    qs: tuple[float, ...] = DEFAULT_QUANTILES,
) -> dict[int, TargetStats]:
    """Every figure of each target over [start, end) (three queries in all). A target
    with no attempts in the period has all counts 0 and no quantiles."""
    ids = sorted(set(route_ids))
    totals: dict[int, dict[str, Any]] = {
        rid: {**dict.fromkeys(COUNTS, 0), **dict.fromkeys(AMOUNTS, Decimal(0))} for rid in ids
    }
    efforts: dict[int, dict[str, dict[str, Any]]] = {rid: {} for rid in ids}
    for row in target_hours(ids, start, end):
        total = totals[row["route_id"]]
        for name in (*COUNTS, *AMOUNTS):
            total[name] += row[name]
        effort = efforts[row["route_id"]].setdefault(
            row["reasoning_effort"],
            {**dict.fromkeys(COUNTS, 0), **dict.fromkeys(AMOUNTS, Decimal(0))},
        )
        for name in (*COUNTS, *AMOUNTS):
            effort[name] += row[name]
    latency = latency_quantiles(ids, start, end, RouteLatencyBucket.Kind.LATENCY, qs)
    ttft = latency_quantiles(ids, start, end, RouteLatencyBucket.Kind.TTFT, qs)
    none = dict.fromkeys(qs)
    return {
        rid: TargetStats(
            route_id=rid,
            attempts=t["attempts"],
            answered=t["answered"],
            failed_over=t["failed_over"],
            status_5xx=t["status_5xx"],
            status_429=t["status_429"],
            failed=t["failed"],
            incomplete=t["incomplete"],
            tokens={name: t[name] for name in TOKEN_COLUMNS},
            serving_cost_usd=t["serving_cost_usd"],
            spend_usd=t["spend_usd"],
            latency_us_sum=t["latency_us_sum"],
            latency_ms=latency.get((rid, None), none),
            ttft_ms=ttft.get((rid, None), none),
            efforts=tuple(
                EffortStats(
                    effort=name,
                    attempts=e["attempts"],
                    answered=e["answered"],
                    output_tokens=e["output_tokens"],
                    reasoning_tokens=e["reasoning_tokens"],
                    serving_cost_usd=e["serving_cost_usd"],
                )
                for name, e in sorted(efforts[rid].items())
            ),
        )
        for rid, t in totals.items()
    }
