"""A chart as data: labels on the x axis, one or more series, and the table behind it.

Every console chart is a `Chart`: the page embeds `Chart.as_json()` (drawn by
`static/console/console.js` with Chart.js) and renders `Chart.table()` as the chart's
data table, and a page's CSV download writes the same table. So the drawing, the table
and the CSV hold the same numbers by construction, and tests compare those numbers with
the REST API answer for the same window.

Values stay exact: token counts are ints, money is a `Decimal` rendered as a string
(the API's own format); only the drawing turns them into JavaScript numbers.
"""

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from billing.csv_cells import csv_row
from billing.pricing.currency import decimal_text

Value = int | Decimal | None

# How a series is drawn. "hidden" marks hidden reasoning: hatched, so it reads apart
# from visible output in colour and in greyscale.
Style = Literal["default", "hidden", "line"]


@dataclass(frozen=True)
class Series:
    key: str  # stable id, e.g. "reasoning" or an alias name
    label: str  # what people read
    values: Sequence[Value]  # one per label; None: no value in that bucket
    style: Style = "default"


@dataclass(frozen=True)
class Chart:
    id: str  # unique on its page; the DOM ids derive from it
    title: str
    labels: Sequence[str]  # x axis: bucket starts (ISO 8601) or category names
    series: Sequence[Series]
    unit: str  # "tokens", "requests", "USD", "%"
    kind: Literal["bar", "line"] = "bar"
    stacked: bool = True
    label_header: str = "Bucket"  # the table's first column
    notes: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for series in self.series:
            if len(series.values) != len(self.labels):
                raise ValueError(
                    f"chart {self.id}: series {series.key} has {len(series.values)} values "
                    f"for {len(self.labels)} labels"
                )

    def as_json(self) -> dict[str, Any]:
        """What console.js draws: money as decimal strings, tokens as ints."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "stacked": self.stacked,
            "unit": self.unit,
            "labels": list(self.labels),
            "series": [
                {
                    "key": s.key,
                    "label": s.label,
                    "style": s.style,
                    "values": [_json_value(v) for v in s.values],
                }
                for s in self.series
            ],
        }

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The data table: a header row and one row per label, cells as text."""
        header = [self.label_header, *(s.label for s in self.series)]
        rows = [
            [label, *(_cell(s.values[i]) for s in self.series)]
            for i, label in enumerate(self.labels)
        ]
        return header, rows

    def csv(self) -> str:
        header, rows = self.table()
        return table_csv(header, rows)


def table_csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table as CSV text, every cell through the one formula guard (billing.csv_cells)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_row(header))
    for row in rows:
        writer.writerow(csv_row(row))
    return out.getvalue()


def _json_value(value: Value) -> int | str | None:
    if isinstance(value, Decimal):
        return decimal_text(value)  # as the API writes money: never "5E-7"
    return value


def _cell(value: Value) -> str:
    if isinstance(value, Decimal):
        return decimal_text(value)
    return "" if value is None else str(value)


def pivot(
    rows: Iterable[dict[str, Any]], *, label_key: str, group_key: str, value_key: str
) -> tuple[list[str], dict[str, list[Value]]]:
    """Long rows (label, group, value) into labels and one value list per group, in first
    seen order; a missing (label, group) is None."""
    labels: list[str] = []
    cells: dict[tuple[str, str], Value] = {}
    groups: list[str] = []
    for row in rows:
        label, group = str(row[label_key]), str(row[group_key])
        if label not in labels:
            labels.append(label)
        if group not in groups:
            groups.append(group)
        cells[(label, group)] = row[value_key]
    return labels, {g: [cells.get((label, g)) for label in labels] for g in groups}
