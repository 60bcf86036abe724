"""Billing periods and plan segments. Pure functions; times are aware UTC datetimes.

A period is monthly and half-open, [start, end), starting on the subscription's anchor
day (1-28) at 00:00 UTC. A plan change inside a period splits it into segments, each
rated on its own plan version; base fee, minimum commitment and allowances of a segment
are prorated by its share of the period's seconds (see billing.plans).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Generic, TypeVar

from metering.calendar import month_day, year_month_of_key

T = TypeVar("T")

# The instants billing computes with, [EARLIEST_INSTANT, LATEST_INSTANT): a period that
# starts inside, and the one after it, end before datetime's year 9999 runs out.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)


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


def calendar_month(value: str) -> Period:
    """The calendar month named "YYYY-MM" as the period [its first day, the next month's),
    UTC, for the API and the commands. Raises ValueError with a message for the caller on
    anything but "YYYY-MM" (metering.calendar parses it), or a month outside the supported
    instants."""
    year, month = year_month_of_key(value)
    if not EARLIEST_INSTANT.year <= year < LATEST_INSTANT.year:
        raise ValueError(
            f"Use a month from {EARLIEST_INSTANT:%Y-%m} to {LATEST_INSTANT.year - 1}-12."
        )
    return Period(month_day(year, month, 1), month_day(year, month + 1, 1))


def period_containing(anchor_day: int, instant: datetime) -> Period:
    if not 1 <= anchor_day <= 28:
        raise ValueError("anchor_day must be within 1..28")
    instant = instant.astimezone(UTC)
    start = month_day(instant.year, instant.month, anchor_day)
    if start > instant:
        start = month_day(instant.year, instant.month - 1, anchor_day)
    return Period(start, month_day(start.year, start.month + 1, anchor_day))


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
