"""Routing visibility (decision 0117): each alias's targets with their calls, error rate,
latency, reasoning per effort, cost per call, live breaker and margin; and the what-if
that re-routes a past month with another policy. Reporting reads (the replica, when one
is configured); the breaker state is read live from Redis.

Who sees what: the routing views need the view of aliases (operator and finance roles);
the per-target margin is shown only to callers who may also view margins (finance),
else null. The
re-route what-if is a finance report (margins permission), as the accelerator what-if."""

import io
from decimal import Decimal

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import may, staff_only
from api.serializers.fields import validated_query
from api.serializers.finance import ratio_text
from api.serializers.routing import (
    REROUTE_FIGURES,
    AliasDetailOutput,
    AliasListOutput,
    RerouteOutput,
    RerouteQuery,
    RoutingPeriodQuery,
    alias_data,
    period_data,
    reroute_data,
    reroute_line_data,
    target_detail_data,
    target_summary_data,
)
from api.views.downloads import FileDownloadView
from billing.csv_cells import SafeWriter
from billing.permissions import MARGINS_VIEW
from billing.pricing.currency import decimal_text
from billing.reports import MarginRow, margin_report, target_label
from billing.reroute import Reroute, whatif_reroute
from config.db_router import reporting_reads
from config.errors import NotFound
from metering.models import Alias, Route
from metering.permissions import ALIAS_VIEW
from metering.routing.breaker import breaker_states
from metering.routing.stats import target_stats


class RoutingAliasListView(APIView):
    """Every alias with its targets and the period's headline figures."""

    permission_classes = [staff_only(GET=ALIAS_VIEW)]

    @extend_schema(parameters=[RoutingPeriodQuery], responses=AliasListOutput)
    @reporting_reads()
    def get(self, request: Request) -> Response:
        query = validated_query(RoutingPeriodQuery, request)
        start, end = query["range"]
        aliases = list(Alias.objects.order_by("name"))
        routes = list(Route.objects.order_by("alias", "priority", "name"))
        stats = target_stats([r.pk for r in routes], start, end)
        by_alias: dict[str, list[Route]] = {}
        for route in routes:
            by_alias.setdefault(route.alias_id, []).append(route)
        out = []
        for alias in aliases:
            targets = by_alias.get(alias.name, [])
            ts = [stats[r.pk] for r in targets]
            attempts = sum(t.attempts for t in ts)
            answered = sum(t.answered for t in ts)
            out.append(
                {
                    **alias_data(alias),
                    "attempts": attempts,
                    "answered": answered,
                    "failed_over": sum(t.failed_over for t in ts),
                    "error_rate": ratio_text(
                        None if attempts == 0 else Decimal(attempts - answered) / attempts
                    ),
                    "serving_cost_usd": decimal_text(
                        sum((t.serving_cost_usd for t in ts), Decimal(0))
                    ),
                    "spend_usd": decimal_text(sum((t.spend_usd for t in ts), Decimal(0))),
                    "targets": [target_summary_data(r, stats[r.pk]) for r in targets],
                }
            )
        return Response({"period": period_data(start, end, query["month"]), "aliases": out})


class RoutingAliasDetailView(APIView):
    """One alias: every figure per target, its live breaker and (finance) its margin."""

    permission_classes = [staff_only(GET=ALIAS_VIEW)]

    @extend_schema(parameters=[RoutingPeriodQuery], responses=AliasDetailOutput)
    @reporting_reads()
    def get(self, request: Request, alias: str) -> Response:
        query = validated_query(RoutingPeriodQuery, request)
        start, end = query["range"]
        # NUL cannot be in a stored name (PostgreSQL refuses it in a query).
        found = None if "\x00" in alias else Alias.objects.filter(name=alias).first()
        if found is None:
            raise NotFound(f"No alias {alias!r}.")
        routes = list(Route.objects.filter(alias_id=alias).order_by("priority", "name"))
        stats = target_stats([r.pk for r in routes], start, end)
        breakers = breaker_states(found.pk)
        margins = query["month"] is not None and may(request.user, MARGINS_VIEW)
        rows: dict[tuple[str, ...], MarginRow] = {}
        if margins:
            rows = {
                r.key: r
                for r in margin_report(period=query["month"], group_by=("alias", "target"))
                if r.key[0] == alias
            }
        names = {r.pk: (alias, r.name) for r in routes}
        return Response(
            {
                "period": period_data(start, end, query["month"]),
                **alias_data(found),
                "targets": [
                    target_detail_data(
                        r,
                        stats[r.pk],
                        breakers.state(r.pk),
                        rows.get((alias, target_label(r.pk, names))),
                        margins,
                    )
                    for r in routes
                ],
            }
        )


def _reroute(request: Request) -> Reroute:
    query = validated_query(RerouteQuery, request)
    return whatif_reroute(
        period=query["period"],
        alias=query["alias"],
        policy=query["policy"],
        weights=query.get("weights"),
        rules=query.get("rules"),
    )


class RerouteWhatIfView(APIView):
    """A past month of one alias's calls re-routed with another policy (billing.reroute)."""

    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[RerouteQuery], responses=RerouteOutput)
    @reporting_reads()
    def get(self, request: Request) -> Response:
        return Response(reroute_data(_reroute(request)))


class RerouteWhatIfCsvView(FileDownloadView):
    """The same, one CSV row per target."""

    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[RerouteQuery], responses={(200, "text/csv"): str})
    @reporting_reads()
    def get(self, request: Request) -> HttpResponse:
        result = _reroute(request)
        out = io.StringIO()
        writer = SafeWriter(out)
        writer.writerow(["target", "route_id", *REROUTE_FIGURES])
        for line in result.lines:
            data = reroute_line_data(line)
            writer.writerow([line.target, line.route_id, *(data[f] for f in REROUTE_FIGURES)])
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in result.alias)
        response["Content-Disposition"] = (
            f'attachment; filename="reroute-{name}-{result.policy}-{result.period.start:%Y-%m}.csv"'
        )
        return response
