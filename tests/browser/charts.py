"""Reading a console page's charts, tables and CSV downloads back in the browser, and the
REST API's answer for the same window, as plain data to compare (numbers, not pixels)."""

import csv
import io
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Page

from tests.e2e.conftest import http

# What console.js drew: labels and, per dataset, the exact values it kept beside the
# numbers Chart.js plots, and whether it is filled with a pattern (hatched).
_DRAWN = """id => {
  const chart = window.reckonCharts[id];
  if (!chart) return null;
  return {
    type: chart.config.type,
    labels: chart.data.labels,
    datasets: chart.data.datasets.map(d => ({
      key: d.reckonKey, label: d.label, values: d.reckonValues, data: d.data,
      hatched: d.backgroundColor instanceof CanvasPattern,
    })),
  };
}"""

_TABLE = """id => Array.from(document.querySelectorAll(`table[data-table-for="${id}"] tr`))
  .map(tr => Array.from(tr.children).map(cell => cell.textContent.trim()))"""


def drawn(page: Page, chart_id: str) -> dict[str, Any]:
    chart = page.evaluate(_DRAWN, chart_id)
    assert chart is not None, f"chart {chart_id} was not drawn"
    return chart


def drawn_series(page: Page, chart_id: str) -> tuple[list[str], dict[str, list[Any]]]:
    """(labels, exact values by series key) of a drawn chart; also checks that the plotted
    numbers are those values."""
    chart = drawn(page, chart_id)
    for dataset in chart["datasets"]:
        plotted = [None if v is None else float(v) for v in dataset["values"]]
        assert dataset["data"] == plotted, (chart_id, dataset["key"])
    return chart["labels"], {d["key"]: d["values"] for d in chart["datasets"]}


def table_rows(page: Page, chart_id: str) -> list[list[str]]:
    """The chart's data table, header first, cells as the page shows them."""
    return page.evaluate(_TABLE, chart_id)


def csv_download(page: Page, chart_id: str) -> list[list[str]]:
    """Click the page's CSV link of the chart and read the downloaded file."""
    with page.expect_download() as download:
        page.click(f'a[href$="chart={chart_id}"]')
    path = download.value.path()
    text = path.read_text(encoding="utf-8")
    return list(csv.reader(io.StringIO(text)))


def api_get(base_url: str, path: str, token: str, **params: str) -> dict[str, Any]:
    status, _, body = http(
        "GET", f"{base_url}{path}?{urlencode(params)}", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200, (path, params, body)
    assert isinstance(body, dict)
    return body


def pivot(
    rows: list[dict[str, Any]], group: str, value: str
) -> tuple[list[str], dict[str, list[Any]]]:
    """Long API rows into bucket labels (first seen order) and one value list per group
    (None where a bucket has no row of the group)."""
    labels: list[str] = []
    cells: dict[tuple[str, str], Any] = {}
    for row in rows:
        if row["start"] not in labels:
            labels.append(row["start"])
        cells[(row["start"], str(row[group]))] = row[value]
    found = {g for _, g in cells}
    # API keys in id order, aliases by code point: the console's series order
    groups = sorted(found, key=int) if all(g.isdigit() for g in found) else sorted(found)
    return labels, {g: [cells.get((label, g)) for label in labels] for g in groups}
