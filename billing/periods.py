"""Billing periods and plan segments. Pure functions; times are aware UTC datetimes.

A period is monthly and half-open, [start, end), starting on the subscription's anchor
day (1-28) at 00:00 UTC. A plan change inside a period splits it into segments, each
rated on its own plan version; base fee, minimum commitment and allowances of a segment
are prorated by its share of the period's seconds (see billing.services).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m-%d}..{self.end:%Y-%m-%d}"

    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True)
class Segment(Generic[T]):
    start: datetime
    end: datetime
    item: T  # what covers this stretch (a subscription)

    def share_of(self, period: Period) -> Decimal:
        """This segment's exact fraction of the period."""
        return Decimal(int((self.end - self.start).total_seconds())) / Decimal(period.seconds())


def _month_start(year: int, month: int, day: int) -> datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return datetime(year, month, day, tzinfo=UTC)


def period_containing(anchor_day: int, instant: datetime) -> Period:
    if not 1 <= anchor_day <= 28:
        raise ValueError("anchor_day must be within 1..28")
    instant = instant.astimezone(UTC)
    start = _month_start(instant.year, instant.month, anchor_day)
    if start > instant:
        start = _month_start(instant.year, instant.month - 1, anchor_day)
    return Period(start, _month_start(start.year, start.month + 1, anchor_day))


def period_after(period: Period, anchor_day: int) -> Period:
    return period_containing(anchor_day, period.end)


def segments(period: Period, spans: list[tuple[datetime, datetime | None, T]]) -> list[Segment[T]]:
    """Clip (start, end-or-None, item) spans to the period, in time order, dropping empties."""
    out: list[Segment[T]] = []
    for start, end, item in sorted(spans, key=lambda s: s[0]):
        lo = max(start, period.start)
        hi = min(end or period.end, period.end)
        if lo < hi:
            out.append(Segment(lo, hi, item))
    return out


def ceil_hour(instant: datetime) -> datetime:
    floor = instant.replace(minute=0, second=0, microsecond=0)
    return floor if floor == instant else floor + timedelta(hours=1)
