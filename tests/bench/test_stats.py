"""bench/stats.py: how every benchmark prints a figure and judges a target. A target is
judged on the median of the rounds, never on the best (or worst) one."""

import re

import pytest

from bench.stats import (
    columns,
    columns_header,
    machine_banner,
    met,
    spread,
    target_line,
    target_met,
)


def test_spread_shows_the_median_then_min_and_max_and_the_rounds() -> None:
    assert spread([1.4, 1.0, 1.2], "ms") == "1.20 ms (min 1.00, max 1.40, 3 rounds)"


def test_spread_of_an_even_number_of_rounds_takes_the_middle_two() -> None:
    assert spread([1.0, 4.0, 2.0, 3.0], digits=1) == "2.5 (min 1.0, max 4.0, 4 rounds)"


def test_spread_of_one_round_says_so_and_of_none_says_nothing_was_measured() -> None:
    assert spread([3.0], "s") == "3.00 s (1 round)"
    assert spread([]) == "no rounds"


def test_spread_scales_before_it_rounds() -> None:
    assert spread([0.0012, 0.001, 0.0015], "ms", digits=1, scale=1000) == (
        "1.2 ms (min 1.0, max 1.5, 3 rounds)"
    )


def test_spread_groups_thousands() -> None:
    assert (
        spread([12345.0, 1234567.0, 99.0], digits=0) == "12,345 (min 99, max 1,234,567, 3 rounds)"
    )


def test_columns_are_median_min_max_under_their_header() -> None:
    header = columns_header(width=8)
    assert header.split() == ["median", "min", "max"]
    cells = columns([30.0, 10.0, 20.0], digits=1, width=8)
    assert cells == "    20.0    10.0    30.0"
    assert len(cells) == len(header)
    assert columns([], width=4) == "   -   -   -"
    assert columns([0.5, 0.25], digits=0, width=6, scale=1000) == "   375   250   500"


@pytest.mark.parametrize(
    ("values", "op", "target", "verdict"),
    [
        # odd rounds: the middle round decides, not the best one
        ([1.0, 9.0, 9.5], "<", 2.0, False),
        ([1.0, 1.5, 9.5], "<", 2.0, True),
        # even rounds: the mean of the middle two (1.0 and 3.0 -> 2.0, not below 2.0)
        ([0.5, 1.0, 3.0, 9.0], "<", 2.0, False),
        ([0.5, 1.0, 3.0, 9.0], "<=", 2.0, True),
        ([0.5, 1.0, 2.8, 9.0], "<", 2.0, True),
        # a throughput target: the median must reach it
        ([70.0, 85.0, 95.0], ">=", 80.0, True),
        ([70.0, 75.0, 95.0], ">=", 80.0, False),
        ([80.0, 80.0, 80.0], ">", 80.0, False),
        ([], "<", 2.0, False),
    ],
)
def test_a_target_is_met_only_when_the_median_meets_it(
    values: list[float], op: str, target: float, verdict: bool
) -> None:
    assert target_met(values, op, target) is verdict
    line = target_line("t", values, op, target, "ms")
    if not values:
        assert line.endswith("NOT MEASURED")
    else:
        assert (": MET," in line) is verdict
        assert (": NOT MET," in line) is not verdict


def test_target_line_prints_the_target_the_verdict_and_the_spread() -> None:
    line = target_line("added p99 at c=1", [1.1, 0.9, 2.5], "<", 2.0, "ms")
    assert line == (
        "target added p99 at c=1 < 2.00 ms: MET, median 1.10 ms (min 0.90, max 2.50, 3 rounds)"
    )


def test_target_line_judges_the_scaled_values() -> None:
    line = target_line("page", [0.25, 0.35, 0.31], "<", 300, "ms", digits=0, scale=1000)
    assert line == "target page < 300 ms: NOT MET, median 310 ms (min 250, max 350, 3 rounds)"


def test_an_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        met(1.0, "==", 1.0)


def test_the_banner_names_the_machine_its_load_and_the_time() -> None:
    banner = machine_banner()
    assert banner.startswith("machine: ")
    assert re.search(r"\d+ CPUs", banner)
    assert "Python " in banner
    assert re.search(r"load average (\d+\.\d\d ){2}\d+\.\d\d", banner)
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$", banner)


@pytest.mark.parametrize("values", [[1.0], [9.0, 20.0]])
def test_fewer_than_three_rounds_are_shown_but_not_judged(values: list[float]) -> None:
    """Two rounds, one of 9 and one of 20: their "median" 14.5 would read MET against 15."""
    line = target_line("cpu per chunk", values, "<=", 15.0, "us")
    assert "NOT JUDGED" in line and ": MET" not in line and ": NOT MET" not in line
    assert f"{len(values)} round" in line
