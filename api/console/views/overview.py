"""Console page: the tenant's month at a glance. Month-to-date spend against its budgets,
the prepaid balance and the live upcoming invoice (members who may see invoices), the
reasoning share of output this month with a daily chart, and the newest alerts.

Each figure is what the REST API answers for the same question, read through the same
service and serializer: budgets as `billing.alerts.budgets_of` (what alerts fire on),
the balance as `GET /api/v1/balance`, the upcoming invoice as
`GET /api/v1/invoices/upcoming`, the month's usage as `GET /api/v1/usage/summary` and
`GET /api/v1/usage/series?granularity=day` (from the month's start to the end of today,
UTC), the alerts as `GET /api/v1/usage/alerts`. A tenant without a plan, a budget or any
usage gets an empty state, never an error.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from api.console.access import INVOICES_VIEW, USAGE_VIEW, can, member_page
from api.console.charts import Chart, Series
from api.console.views.common import page
from api.console.views.usage import REASONING_LABEL, REASONING_NOTE, SeriesWindow, series_rows
from api.serializers.balances import balance_data
from api.serializers.invoices import period_rating_data
from api.serializers.usage import AlertSerializer, UsageSummaryRowSerializer
from billing.alerts import (
    Budget,
    alert_thresholds,
    alerts_for_tenant,
    budget_state,
    budgets_of,
)
from billing.balances import balance_state, credits_of
from billing.models import BalanceAccount
from billing.period_rating import invoice_preview
from billing.pricing.currency import is_known_currency, quantize
from config.db_router import reporting_reads
from config.errors import NotFound
from metering.calendar import month_start
from metering.models import TenantMember
from metering.selectors import spend_since, usage_summary
from metering.usage import TOKEN_CLASS_LABELS

RECENT_ALERTS = 10
_PERCENT = Decimal("0.1")


@dataclass(frozen=True)
class Meter:
    """One budget as the page draws it."""

    budget: Budget
    used_text: str
    limit_text: str
    percent: Decimal | None  # used / limit in percent (None: no positive limit)
    width: int  # the bar, 0..100
    state: str  # "ok", "warn" (a threshold crossed), "bad" (the limit reached)
    thresholds: tuple[int, ...]


def budget_meter(budget: Budget, thresholds: tuple[int, ...]) -> Meter:
    """The budget's state by `billing.alerts.budget_state` (the staff's tenants page
    shows the same): warn once an alert threshold is crossed, bad from 100 % on."""
    state = budget_state(budget, thresholds)
    return Meter(
        budget=budget,
        used_text=amount_text(budget.used, budget.unit),
        limit_text=amount_text(budget.limit, budget.unit),
        percent=state.percent,
        width=0 if state.percent is None else max(0, min(100, int(state.percent))),
        state=state.state,
        thresholds=thresholds,
    )


def amount_text(amount: Decimal, unit: str) -> str:
    """Money rounded to its currency's minor unit for reading; tokens as whole numbers."""
    if is_known_currency(unit):
        return f"{quantize(amount, unit):,} {unit.upper()}"
    return f"{int(amount):,} {unit.replace('_', ' ')}"


def month_window(member: TenantMember, now: datetime) -> SeriesWindow:
    """This UTC month so far, to the end of today: whole hours, served from rollups."""
    now = now.astimezone(UTC)
    until = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return SeriesWindow(
        tenant_id=member.tenant_id,
        granularity="day",
        since=month_start(now),
        until=until,
        alias=None,
        api_key_id=None,
    )


def chart_reasoning_share(window: SeriesWindow, rows: list[dict[str, Any]]) -> Chart:
    """Visible output and hidden reasoning per day of the month, stacked."""
    return Chart(
        id="reasoning-share",
        title="Visible output and hidden reasoning per day",
        labels=[r["start"] for r in rows],
        series=[
            Series(
                key="output",
                label=TOKEN_CLASS_LABELS["output"],
                values=[r["output_tokens"] for r in rows],
            ),
            Series(
                key="reasoning",
                label=REASONING_LABEL,
                values=[r["reasoning_tokens"] for r in rows],
                style="hidden",
            ),
        ],
        unit="tokens",
        label_header="Day (UTC)",
        notes=(REASONING_NOTE, f"Same numbers as GET {window.api_query()}"),
    )


def month_usage(window: SeriesWindow) -> dict[str, Any]:
    """The month's totals as `GET /api/v1/usage/summary` (same window) returns them."""
    with reporting_reads():
        rows = usage_summary(filters=window.filters)
        return dict(UsageSummaryRowSerializer(rows, many=True).data[0])


def share_percent(share: str | None) -> str | None:
    if share is None:
        return None
    return f"{(Decimal(share) * 100).quantize(_PERCENT, ROUND_HALF_UP)} %"


def balance_of(member: TenantMember) -> dict[str, Any] | None:
    """`GET /api/v1/balance`'s answer (None: the tenant has no prepaid balance), with its
    amounts as text to read."""
    account = BalanceAccount.objects.filter(tenant_id=member.tenant_id).first()
    if account is None:
        return None
    state = balance_state(member.tenant_id)
    assert state is not None  # accounts are never deleted
    data = balance_data(state, credits_of([account.pk]))
    data["text"] = {
        name: amount_text(Decimal(data[name]), data["currency"])
        for name in ("available", "uninvoiced_spend", "remaining")
    }
    return data


def upcoming_invoice(member: TenantMember, now: datetime) -> dict[str, Any] | None:
    """`GET /api/v1/invoices/upcoming`'s answer (None: no current subscription)."""
    try:
        rating = invoice_preview(tenant_id=member.tenant_id, as_of=now)
    except NotFound:
        return None
    data = period_rating_data(rating)
    data["lines"] = [line for segment in data["segments"] for line in segment["lines"]]
    data["unpriced"] = [u for segment in data["segments"] for u in segment["unpriced"]]
    return data


@require_GET
@member_page(USAGE_VIEW)
def overview(request: HttpRequest, member: TenantMember) -> HttpResponse:
    now = timezone.now()
    tenant_id = member.tenant_id
    sees_money = can(member, INVOICES_VIEW)
    thresholds = alert_thresholds(tenant_id)
    meters = [
        budget_meter(b, thresholds)
        for b in budgets_of(tenant_id, now)
        # the balance's figures are for those who may see the balance
        if sees_money or b.key != "balance"
    ]
    window = month_window(member, now)
    usage = month_usage(window)
    # what spend limits count: list price, flagged calls included (metering.selectors)
    spent = spend_since(tenant_id=tenant_id, since=window.since)
    chart = chart_reasoning_share(window, series_rows(window))
    recent = alerts_for_tenant(tenant_id=tenant_id)
    if not sees_money:  # the balance's figures are for those who may see the balance
        recent = recent.exclude(budget="balance")
    alerts = AlertSerializer(recent[:RECENT_ALERTS], many=True)
    return page(
        request,
        "console/overview.html",
        {
            "now": now,
            "month": f"{window.since:%B %Y}",
            "meters": meters,
            "spent_text": amount_text(spent, "USD"),
            "thresholds": thresholds,
            "usage": usage,
            "share_percent": share_percent(usage["reasoning_share_of_output"]),
            "chart": chart,
            "alerts": [
                {
                    **a,
                    # "2026-11-20T12:30:00.123456Z" -> "2026-11-20 12:30"
                    "created_text": a["created_at"][:16].replace("T", " "),
                    "used_text": amount_text(Decimal(a["used"]), a["unit"]),
                    "limit_text": amount_text(Decimal(a["limit"]), a["unit"]),
                }
                for a in alerts.data
            ],
            "sees_money": sees_money,
            "balance": balance_of(member) if sees_money else None,
            "upcoming": upcoming_invoice(member, now) if sees_money else None,
        },
    )
