"""What every benchmark prints the same way: the machine it ran on, each figure as its
median with the min and max over the rounds, and a target judged on the median only.

    sys.path.insert(0, str(ROOT))     # the repository, as the benchmarks put it
    from bench.stats import machine_banner, spread, target_line   # or, bench/ on the path: from stats import ...

    print(machine_banner())            # once, before the figures
    print(spread([1.2, 1.0, 1.4], "ms"))   # -> "1.20 ms (min 1.00, max 1.40, 3 rounds)"
    print(spread([0.0012, 0.0010], "ms", scale=1000))   # seconds shown as milliseconds
    print(target_line("added p99 at c=1", [1.1, 0.9, 2.5], "<", 2.0, "ms"))

    # a table: one row per case, the median, min and max as columns
    print(f"{'case':20}{columns_header()}")
    print(f"{'one':20}{columns([3.0, 1.0, 2.0], digits=1)}")

A figure from one lucky round is not a result: `spread` always shows the rounds it came
from, and `target_line` says MET only when the median meets the target.
"""

import argparse
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

DATABASE_URL_DEFAULT = "postgres://postgres@127.0.0.1:5432/test"


def add_database_url(parser: "argparse.ArgumentParser") -> None:
    """The `--database-url` every benchmark takes: the server its scratch database goes on
    (default: DATABASE_URL, else the local test server)."""
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", DATABASE_URL_DEFAULT)
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_banner() -> str:
    """One line naming the machine, the software and how busy it was when the run began."""
    try:
        one, five, fifteen = os.getloadavg()
        load = f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        load = "load average unknown"
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "memory unknown"
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, {load}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float], unit: str = "", digits: int = 2, scale: float = 1.0) -> str:
    """'median (min A, max B, N rounds)' with the unit after the median; every value
    multiplied by `scale` first (seconds timed, milliseconds shown: scale=1000)."""
    if not values:
        return "no rounds"
    values = [value * scale for value in values]
    unit_text = f" {unit}" if unit else ""
    middle = _number(statistics.median(values), digits)
    if len(values) == 1:
        return f"{middle}{unit_text} (1 round)"
    low, high = _number(min(values), digits), _number(max(values), digits)
    return f"{middle}{unit_text} (min {low}, max {high}, {len(values)} rounds)"


def columns_header(width: int = 10) -> str:
    """The header of the cells `columns` prints: median first, then min and max."""
    return f"{'median':>{width}}{'min':>{width}}{'max':>{width}}"


def columns(values: Sequence[float], digits: int = 2, width: int = 10, scale: float = 1.0) -> str:
    """The median, min and max of `values` (times `scale`) as right-aligned table cells,
    under `columns_header(width)`; the table states its rounds once."""
    if not values:
        return f"{'-':>{width}}" * 3
    scaled = [value * scale for value in values]
    return "".join(
        f"{_number(v, digits):>{width}}"
        for v in (statistics.median(scaled), min(scaled), max(scaled))
    )


def met(median: float, op: str, target: float) -> bool:
    if op == "<":
        return median < target
    if op == "<=":
        return median <= target
    if op == ">":
        return median > target
    if op == ">=":
        return median >= target
    raise ValueError(f"unknown comparison {op!r}")


def target_met(values: Sequence[float], op: str, target: float) -> bool:
    """Whether the median of the rounds meets the target (never one lucky round)."""
    return bool(values) and met(statistics.median(values), op, target)


MIN_JUDGED_ROUNDS = 3


def target_line(
    name: str,
    values: Sequence[float],
    op: str,
    target: float,
    unit: str = "",
    digits: int = 2,
    scale: float = 1.0,
) -> str:
    """'target NAME OP T: MET|NOT MET, median M (min, max, rounds)', judged on the median
    of `values` times `scale` (the target is in the scaled unit)."""
    unit_text = f" {unit}" if unit else ""
    head = f"target {name} {op} {_number(target, digits)}{unit_text}"
    if not values:
        return f"{head}: NOT MEASURED"
    values = [value * scale for value in values]
    if len(values) < MIN_JUDGED_ROUNDS:  # of two rounds the "median" is their mean
        return (
            f"{head}: NOT JUDGED (a target needs {MIN_JUDGED_ROUNDS} rounds or more), "
            f"median {spread(values, unit, digits)}"
        )
    verdict = "MET" if target_met(values, op, target) else "NOT MET"
    return f"{head}: {verdict}, median {spread(values, unit, digits)}"
