"""The CSV cell guard: formula-looking text is quoted, numbers and numerals stay numbers."""

import csv
import io
import uuid
from datetime import date
from decimal import Decimal

import pytest

from billing.csv_cells import SafeWriter, csv_safe


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-", "'-"),
        ("- 5", "'- 5"),
        ("-1e", "'-1e"),
        ("-12", "-12"),
        ("-0.500000000000", "-0.500000000000"),
        ("+3.25e-4", "+3.25e-4"),
        ("-.5", "-.5"),
        ("gpt-r", "gpt-r"),
        ("a=b", "a=b"),
        ("", ""),
        (-700, -700),
        (Decimal("-1.25"), Decimal("-1.25")),
        (None, None),
    ],
)
def test_csv_safe(value: object, written: object) -> None:
    assert csv_safe(value) == written


def test_the_writer_guards_every_cell() -> None:
    out = io.StringIO()
    tenant = uuid.UUID(int=7)
    SafeWriter(out).writerow(["=cmd|' /C calc'!A0", -3, "-3", tenant, date(2026, 10, 1)])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == [
        "'=cmd|' /C calc'!A0",
        "-3",
        "-3",
        str(tenant),
        "2026-10-01",
    ]
