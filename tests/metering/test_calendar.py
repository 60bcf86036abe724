"""Calendar months in UTC (metering/calendar.py): the one parser of "YYYY-MM"."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from metering.calendar import month_key, month_of_key, month_start, year_month_of_key


def test_a_month_key_round_trips() -> None:
    at = datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # Feb 28 in UTC
    assert month_key(at) == "2026-02"
    assert month_of_key(month_key(at)) == month_start(at) == datetime(2026, 2, 1, tzinfo=UTC)
    assert year_month_of_key("0001-12") == (1, 12)


@pytest.mark.parametrize(
    "key", ["2026-13", "2026-00", "2026-9", "26-09", "2026-09-01", " 2026-09", "２０２６-０９", ""]
)
def test_anything_but_year_dash_month_is_refused_with_the_callers_message(key: str) -> None:
    with pytest.raises(ValueError, match=r"^Use YYYY-MM\.$"):
        month_of_key(key)
