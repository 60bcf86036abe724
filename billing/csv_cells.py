"""CSV cells a spreadsheet will not run: the one guard every CSV export writes through.

Invariants:
- a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return (what Excel,
  LibreOffice and Google Sheets read as a formula) is written with a leading `'`, so it
  shows as the same text and never runs;
- a number stays a number: ints, Decimals and floats are written as they are, and so is
  text that is a plain decimal numeral (`-12`, `-0.5`, `+3.25e-4`: what the APIs render
  an exact amount or a drift as), so a negative drift or credit still sums;
- every other value (dates, UUIDs, booleans, empty) is written unchanged.
"""

import csv
import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMERAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_safe(value: Any) -> Any:
    """`value` as a cell no spreadsheet evaluates (see the module doc)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        if _NUMERAL.fullmatch(value):
            return value
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    return [csv_safe(v) for v in values]


class SafeWriter:
    """`csv.writer` whose every row goes through `csv_safe`."""

    def __init__(self, out: Any) -> None:
        self._writer = csv.writer(out)

    def writerow(self, values: Iterable[Any]) -> None:
        self._writer.writerow(csv_row(values))
