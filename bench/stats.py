"""What every benchmark prints the same way: the machine it ran on, each figure as its
median with the min and max over the rounds, and a target judged on the median only.

    from stats import machine_banner, spread, target_line

    print(machine_banner())            # once, before the figures
    print(spread([1.2, 1.0, 1.4], "ms"))   # -> "1.20 ms (min 1.00, max 1.40, 3 rounds)"
    print(target_line("added p99 at c=1", [1.1, 0.9, 2.5], "<", 2.0, "ms"))

A figure from one lucky round is not a result: `spread` always shows the rounds it came
from, and `target_line` says MET only when the median meets the target.
"""

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


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


def spread(values: Sequence[float], unit: str = "", digits: int = 2) -> str:
    """'median (min A, max B, N rounds)' with the unit after the median."""
    if not values:
        return "no rounds"
    unit_text = f" {unit}" if unit else ""
    middle = _number(statistics.median(values), digits)
    if len(values) == 1:
        return f"{middle}{unit_text} (1 round)"
    low, high = _number(min(values), digits), _number(max(values), digits)
    return f"{middle}{unit_text} (min {low}, max {high}, {len(values)} rounds)"


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


def target_line(
    name: str, values: Sequence[float], op: str, target: float, unit: str = "", digits: int = 2
) -> str:
    """'target NAME OP T: MET|NOT MET, median M (min, max, rounds)', judged on the median."""
    if not values:
        return f"target {name} {op} {target}{unit}: NOT MEASURED"
    verdict = "MET" if met(statistics.median(values), op, target) else "NOT MET"
    unit_text = f" {unit}" if unit else ""
    return (
        f"target {name} {op} {_number(target, digits)}{unit_text}: {verdict}, "
        f"median {spread(values, unit, digits)}"
    )
