"""Template tags of the console: `{% chart c %}` draws a `api.console.charts.Chart` with
its data table, `{% nav_link %}` marks the current page."""

from typing import Any

from django import template

from api.console.charts import Chart

register = template.Library()


@register.inclusion_tag("console/_chart.html")
def chart(chart: Chart, caption: str = "") -> dict[str, Any]:
    header, rows = chart.table()
    return {
        "chart": chart,
        "data": chart.as_json(),
        "data_id": f"chart-data-{chart.id}",
        "header": header,
        "rows": rows,
        "caption": caption,
    }
