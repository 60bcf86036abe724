"""Calendar months in UTC: the one home for where a month starts.

Budgets count per calendar month (spend control, alerts), billing periods run from an
anchor day of one month to the same day of the next, and Redis counter keys name a month
as "YYYY-MM". All of them take their boundaries from here, so an instant near midnight in
another time zone is never counted in the wrong month. Pure functions on aware datetimes.
"""

import re
from datetime import UTC, datetime

_YEAR_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


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


def year_month_of_key(key: str) -> tuple[int, int]:
    """(year, month) of a month named "YYYY-MM": the one parser of a month, for counter
    keys, the API and the commands. Raises ValueError with a message for the caller on
    anything else; the range of years is the caller's to check."""
    match = _YEAR_MONTH.fullmatch(key)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise ValueError("Use YYYY-MM.")
    return int(match[1]), int(match[2])


def month_of_key(key: str) -> datetime:
    """The first instant of the month a "YYYY-MM" key names (ValueError: see
    `year_month_of_key`)."""
    year, month = year_month_of_key(key)
    return month_day(year, month)
