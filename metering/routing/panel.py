"""The alias admin's "economics (last 7 days)" panel: one small HTML table row per target
from `metering.routing.stats`, with its live breaker. Metering cannot read billing's
rated revenue, so the margin shown is at list price (spend, what limits count, against
serving cost); the finance API's routing view gives the rated margin."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from metering.models import Alias, Route
from metering.routing.breaker import breaker_states
from metering.routing.stats import target_stats

PANEL_DAYS = 7
COLUMNS = (
    "target",
    "breaker",
    "attempts",
    "answered",
    "error rate",
    "p50 / p99 ms",
    "reasoning / call",
    "cost / call (USD)",
    "list-price margin",
)


def _fixed(value: Decimal | None, places: str) -> str:
    return "-" if value is None else str(value.quantize(Decimal(places)))


def economics_panel(alias: Alias, *, now: datetime | None = None) -> SafeString:
    """The table for `alias` over the PANEL_DAYS days before `now` (whole hours)."""
    if alias.pk is None:
        return format_html("{}", "-")
    end = (now or timezone.now()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    routes = list(Route.objects.filter(alias_id=alias.name).order_by("priority", "name"))
    stats = target_stats([r.pk for r in routes], end - timedelta(days=PANEL_DAYS), end)
    breakers = breaker_states(alias.pk)
    rows = []
    for route in routes:
        s = stats[route.pk]
        reasoning = None if not s.answered else Decimal(s.tokens["reasoning_tokens"]) / s.answered
        margin = None if not s.spend_usd else (s.spend_usd - s.serving_cost_usd) / s.spend_usd
        p50, p99 = s.latency_ms.get(0.5), s.latency_ms.get(0.99)
        rows.append(
            (
                route.name if route.is_active else f"{route.name} (inactive)",
                breakers.state(route.pk),
                s.attempts,
                s.answered,
                _fixed(s.error_rate, "0.0001"),
                f"{p50 if p50 is not None else '-'} / {p99 if p99 is not None else '-'}",
                _fixed(reasoning, "1"),
                _fixed(s.cost_per_call, "0.000001"),
                _fixed(margin, "0.0001"),
            )
        )
    head = format_html_join("", "<th>{}</th>", ((c,) for c in COLUMNS))
    body = format_html_join("", "<tr>" + "<td>{}</td>" * len(COLUMNS) + "</tr>", rows)
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)
