"""Calendar months in UTC: the one home for where a month starts.

Budgets count per calendar month (spend control, alerts), billing periods run from an
anchor day of one month to the same day of the next, and Redis counter keys name a month
as "YYYY-MM". All of them take their boundaries from here, so an instant near midnight in
another time zone is never counted in the wrong month. Pure functions on aware datetimes.
"""

from datetime import UTC, datetime


def month_day(year: int, month: int, day: int = 1) -> datetime:
    """Midnight UTC on `day` of the month; `month` may run past 1..12 (13 is next January)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return datetime(year, month, day, tzinfo=UTC)


def month_start(at: datetime) -> datetime:
    """The first instant of `at`'s calendar month, UTC."""
    at = at.astimezone(UTC)
    return month_day(at.year, at.month)


def month_key(at: datetime) -> str:
    """The month as counters name it: "YYYY-MM" of `at` in UTC."""
    return f"{month_start(at):%Y-%m}"


def month_of_key(key: str) -> datetime:
    """The first instant of the month a "YYYY-MM" counter key names."""
    year, month = key.split("-")
    return month_day(int(year), int(month))
