"""Console pages for staff: margins over time, tenants nearest their limits, plan warnings,
reconciliation. Each page checks the permission the REST view of the same data checks,
and reads through the same selectors; the margin charts are built from the very answer
of GET /api/v1/finance/margins/series for the page's query (`margin_series_answer`)."""

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from api.console.access import staff_page
from api.console.charts import Chart, Series
from api.console.views.common import page
from api.serializers.finance import MarginSeriesQuery
from api.serializers.reconciliation import ReconciliationQuery
from api.views.finance import margin_series_answer
from billing.costs.provider_costs import EXACT
from billing.permissions import MARGINS_VIEW, PLAN_VERSION_VIEW
from billing.pricing.currency import quantize
from billing.reports import GROUPINGS, SERIES_GRANULARITIES
from billing.watchlist import plan_warnings, tenants_nearest_limits
from config.db_router import reporting_reads
from metering.calendar import month_start
from metering.permissions import RECONCILIATION_VIEW, TENANT_VIEW
from metering.reconcile.selectors import reconciliation_summary

# --- margins ---------------------------------------------------------------------------

# The chart of gross margin per group is "margin-by-<group_by>".
MARGIN_CHARTS = ("margin-revenue-cost", "reasoning-cost-share")


def _money(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def margin_charts(answer: dict[str, Any]) -> list[Chart]:
    """The margins page's charts from the API answer (`margin_series_data`): every value
    is one of its decimal strings, read back exactly."""
    labels = answer["buckets"]
    totals = answer["totals"]
    group_by = answer["group_by"]
    unit_label = "Month" if answer["granularity"] == "month" else "Day (UTC)"

    def column(field: str) -> list[Decimal | None]:
        return [_money(t[field]) for t in totals]

    revenue_cost = Chart(
        id="margin-revenue-cost",
        title="Revenue, serving cost and gross margin",
        labels=labels,
        series=[
            Series("revenue_usd", "Revenue", column("revenue_usd"), "line"),
            Series("cost_usd", "Serving cost", column("cost_usd"), "line"),
            Series("gross_margin_usd", "Gross margin", column("gross_margin_usd"), "line"),
        ],
        unit="USD",
        kind="line",
        stacked=False,
        label_header=unit_label,
        notes=[
            "Revenue is each month's rating, spread over the days by the tokens served; "
            "fees of no alias accrue evenly over their month."
        ],
    )
    groups = {g["key"]: g["label"] for g in answer["groups"]}
    cells = {(r["start"], r["group"]): r["gross_margin_usd"] for r in answer["rows"]}
    by_group = Chart(
        id=f"margin-by-{group_by}",
        title=f"Gross margin by {group_by}",
        labels=labels,
        series=[
            Series(key, label, [_money(cells.get((b, key))) for b in labels])
            for key, label in groups.items()
        ],
        unit="USD",
        kind="bar",
        stacked=True,
        label_header=unit_label,
        notes=["An empty cell: the group had no usage and no revenue in that bucket."],
    )
    reasoning = Chart(
        id="reasoning-cost-share",
        title="Serving cost: hidden reasoning and the other token classes",
        labels=labels,
        series=[
            Series(
                "reasoning_cost_usd", "Hidden reasoning", column("reasoning_cost_usd"), "hidden"
            ),
            Series("other_cost_usd", "Other classes", column("other_cost_usd")),
        ],
        unit="USD",
        kind="bar",
        stacked=True,
        label_header=unit_label,
    )
    return [revenue_cost, by_group, reasoning]


def _margin_query(request: HttpRequest) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The page's query through the API's own query serializer: (query, None-or-errors)."""
    query = MarginSeriesQuery(data=request.GET)
    if not query.is_valid():
        return None, {field: " ".join(map(str, e)) for field, e in query.errors.items()}
    return dict(query.validated_data), {}


def _window_totals(totals: list[dict[str, Any]]) -> dict[str, Decimal | None]:
    with localcontext(EXACT):
        revenue = sum((Decimal(t["revenue_usd"]) for t in totals), Decimal(0))
        cost = sum((Decimal(t["cost_usd"]) for t in totals), Decimal(0))
        reasoning = sum((Decimal(t["reasoning_cost_usd"]) for t in totals), Decimal(0))
        margin = revenue - cost
    return {
        # money as the rest of the console rounds it (half up, the currency's exponent)
        "revenue": quantize(revenue, "USD"),
        "cost": quantize(cost, "USD"),
        "margin": quantize(margin, "USD"),
        "margin_pct": None if revenue == 0 else _percent(margin, revenue),
        "reasoning_pct": None if cost == 0 else _percent(reasoning, cost),
    }


def _percent(part: Decimal, whole: Decimal) -> Decimal:
    return (100 * part / whole).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


@staff_page(MARGINS_VIEW)
@reporting_reads()
def margins(request: HttpRequest) -> HttpResponse:
    query, errors = _margin_query(request)
    context: dict[str, Any] = {
        "errors": errors,
        "groupings": GROUPINGS,
        "granularities": SERIES_GRANULARITIES,
        "form": {k: request.GET.get(k, "") for k in ("since", "until", "granularity", "group_by")},
    }
    if query is None:
        return page(request, "console/staff/margins.html", context, status=400)
    answer = margin_series_answer(query)
    charts = margin_charts(answer)
    base = {
        "since": query["since"].date().isoformat(),
        "until": query["until"].date().isoformat(),
        "granularity": query["granularity"],
        "group_by": query["group_by"],
    }
    csv_url = reverse("console:staff-margins-csv")
    context.update(
        query=base,
        charts=[
            {"chart": c, "csv": f"{csv_url}?{urlencode({**base, 'chart': c.id})}"} for c in charts
        ],
        api_url=f"/api/v1/finance/margins/series?{urlencode(base)}",
        totals=_window_totals(answer["totals"]),
    )
    return page(request, "console/staff/margins.html", context)


@staff_page(MARGINS_VIEW)
@reporting_reads()
def margins_csv(request: HttpRequest) -> HttpResponse:
    query, errors = _margin_query(request)
    if query is None:
        return HttpResponse(
            "\n".join(f"{k}: {v}" for k, v in errors.items()), status=400, content_type="text/plain"
        )
    wanted = request.GET.get("chart", "")
    chart = next((c for c in margin_charts(margin_series_answer(query)) if c.id == wanted), None)
    if chart is None:
        raise Http404("No such chart on the margins page.")
    response = HttpResponse(chart.csv(), content_type="text/csv")
    response["Content-Disposition"] = (
        f'attachment; filename="{chart.id}-{query["since"]:%Y%m%d}-{query["until"]:%Y%m%d}.csv"'
    )
    return response


# --- tenants nearest their limits ------------------------------------------------------


@staff_page(TENANT_VIEW)
@reporting_reads()
def tenants(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    nearest = tenants_nearest_limits(at=now)
    rows = [
        {
            "near": near,
            "percent": near.state.percent,
            "width": None if near.state.percent is None else min(100, int(near.state.percent)),
            # the member's overview draws the same state (billing.alerts.budget_state)
            "meter": near.state.state,
        }
        for near in nearest.rows
    ]
    return page(
        request,
        "console/staff/tenants.html",
        {"rows": rows, "at": now, "checked": nearest.checked, "total": nearest.total},
    )


# --- plan warnings ---------------------------------------------------------------------


@staff_page(PLAN_VERSION_VIEW)
def plans(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    return page(request, "console/staff/plans.html", {"plans": plan_warnings(at=now), "at": now})


# --- reconciliation --------------------------------------------------------------------


@staff_page(RECONCILIATION_VIEW)
@reporting_reads()
def reconciliation(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    params.setdefault("period", f"{month_start(datetime.now(UTC)):%Y-%m}")
    query = ReconciliationQuery(data=params)
    if not query.is_valid():
        errors = {field: " ".join(map(str, e)) for field, e in query.errors.items()}
        return page(
            request,
            "console/staff/reconciliation.html",
            {"errors": errors, "form": {"period": params.get("period", "")}},
            status=400,
        )
    period = query.validated_data["period"]
    only = query.validated_data.get("account")
    accounts = [
        {
            "summary": summary,
            "csv": "/api/v1/finance/reconciliation.csv?"
            + urlencode({"period": f"{period.start:%Y-%m}", "account": summary.account.name}),
        }
        for summary in reconciliation_summary(
            start=period.start.date(),
            end=period.end.date(),
            account_id=None if only is None else only.pk,
        )
    ]
    return page(
        request,
        "console/staff/reconciliation.html",
        {
            "accounts": accounts,
            "period": f"{period.start:%Y-%m}",
            "form": {"period": f"{period.start:%Y-%m}"},
            "errors": {},
        },
    )
