"""Finance and operator views for the hardware cost basis: the accelerator catalogue,
cost bases, deployments, margin policies, margin reports (JSON and CSV) and the what-if;
and the reconciliation of the ledger against the providers' reports (JSON and CSV)."""

import io
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.pagination import DayCursorPagination
from api.permissions import staff_only
from api.serializers.fields import validated_body, validated_query
from api.serializers.finance import (
    MARGIN_FIGURES,
    CostBasisInput,
    DeploymentInput,
    MarginPolicyInput,
    MarginQuery,
    MarginReportOutput,
    MarginSeriesOutput,
    MarginSeriesQuery,
    WhatIfQuery,
    decimal_text_or_none,
    margin_row_data,
    margin_series_data,
    whatif_data,
)
from api.serializers.reconciliation import (
    RECONCILIATION_FIELDS,
    ReconciliationQuery,
    ReconciliationRowOutput,
    reconciliation_csv_values,
)
from api.views.downloads import FileDownloadView
from billing.costs.catalogue import (
    CannotPrice,
    accelerator_get,
    class_costs_of,
    cost_basis_create,
    cost_basis_in_force,
    deployment_set,
    hourly_cost_of,
)
from billing.costs.margins import Margins, margin_policy_set
from billing.csv_cells import SafeWriter
from billing.models import AcceleratorType
from billing.permissions import (
    ACCELERATOR_VIEW,
    COST_BASIS_ADD,
    DEPLOYMENT_ADD,
    MARGIN_POLICY_ADD,
    MARGINS_VIEW,
)
from billing.pricing.currency import decimal_text
from billing.reports import MarginRow, margin_report, margin_series, whatif
from config.db_router import reporting_reads
from metering.models import ReconciliationRow
from metering.permissions import RECONCILIATION_VIEW
from metering.reconcile.selectors import reconciliation_rows


class AcceleratorListView(APIView):
    permission_classes = [staff_only(GET=ACCELERATOR_VIEW)]

    def get(self, request: Request) -> Response:
        now = timezone.now()
        out = []
        for accelerator in AcceleratorType.objects.all():
            basis = cost_basis_in_force(accelerator=accelerator, at=now)
            try:
                hourly = decimal_text_or_none(hourly_cost_of(basis)) if basis else None
                missing: list[str] = []
            except CannotPrice as exc:
                hourly, missing = None, exc.extra.get("missing", [])
            out.append(
                {
                    "key": accelerator.key,
                    "vendor": accelerator.vendor,
                    "memory_gb": accelerator.memory_gb,
                    "tdp_watts": accelerator.tdp_watts,
                    "source": accelerator.source,
                    "cost_basis_version": basis.version if basis else None,
                    "mode": basis.mode if basis else None,
                    "hourly_usd": hourly,
                    "missing_for_pricing": missing,
                }
            )
        return Response(out)


class CostBasisCreateView(APIView):
    permission_classes = [staff_only(POST=COST_BASIS_ADD)]

    @extend_schema(request=CostBasisInput)
    def post(self, request: Request, key: str) -> Response:
        body = validated_body(CostBasisInput, request)
        version = cost_basis_create(accelerator=accelerator_get(key), **body)
        try:
            hourly = decimal_text_or_none(hourly_cost_of(version))
        except CannotPrice:
            hourly = None
        return Response(
            {"accelerator": key, "version": version.version, "hourly_usd": hourly},
            status=status.HTTP_201_CREATED,
        )


class MarginPolicyCreateView(APIView):
    permission_classes = [staff_only(POST=MARGIN_POLICY_ADD)]

    @extend_schema(request=MarginPolicyInput)
    def post(self, request: Request, key: str) -> Response:
        body = validated_body(MarginPolicyInput, request)
        policy = margin_policy_set(accelerator=accelerator_get(key), **body)
        return Response({"accelerator": key, "id": policy.pk}, status=status.HTTP_201_CREATED)


class DeploymentCreateView(APIView):
    permission_classes = [staff_only(POST=DEPLOYMENT_ADD)]

    @extend_schema(request=DeploymentInput)
    def post(self, request: Request) -> Response:
        data = validated_body(DeploymentInput, request)
        deployment = deployment_set(accelerator=accelerator_get(data.pop("accelerator")), **data)
        basis = cost_basis_in_force(
            accelerator=deployment.accelerator, at=deployment.effective_from
        )
        costs = class_costs_of(deployment, basis)._asdict() if basis else {}
        return Response(
            {
                "alias": deployment.alias,
                "target": deployment.route.name if deployment.route else None,
                "version": deployment.version,
                "cost_per_million_usd": {k: decimal_text(v) for k, v in costs.items()},
            },
            status=status.HTTP_201_CREATED,
        )


def _margin_rows(request: Request) -> tuple[dict[str, Any], list[MarginRow]]:
    query = validated_query(MarginQuery, request)
    return query, margin_report(period=query["period"], group_by=query["group_by"])


class MarginReportView(APIView):
    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[MarginQuery], responses=MarginReportOutput)
    @reporting_reads()
    def get(self, request: Request) -> Response:
        query, rows = _margin_rows(request)
        return Response(
            {"group_by": list(query["group_by"]), "rows": [margin_row_data(r) for r in rows]}
        )


def margin_series_answer(query: dict[str, Any]) -> dict[str, Any]:
    """GET /api/v1/finance/margins/series's answer for a valid `MarginSeriesQuery`: the
    console's margin charts are built from it, so chart and API agree."""
    series = margin_series(
        since=query["since"],
        until=query["until"],
        granularity=query["granularity"],
        group_by=query["group_by"],
    )
    return margin_series_data(query, series)


class MarginSeriesView(APIView):
    """Revenue, serving cost and gross margin per UTC day or month and group (the margin
    report over time; its buckets of a whole month sum to that month's report)."""

    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[MarginSeriesQuery], responses=MarginSeriesOutput)
    @reporting_reads()
    def get(self, request: Request) -> Response:
        return Response(margin_series_answer(validated_query(MarginSeriesQuery, request)))


class MarginReportCsvView(FileDownloadView):
    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[MarginQuery], responses={(200, "text/csv"): str})
    @reporting_reads()
    def get(self, request: Request) -> HttpResponse:
        query, rows = _margin_rows(request)
        out = io.StringIO()
        writer = SafeWriter(out)
        writer.writerow([*query["group_by"], *MARGIN_FIGURES])
        for row in rows:
            data = margin_row_data(row)
            writer.writerow([*row.key, *(data[figure] for figure in MARGIN_FIGURES)])
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="margins-{query["period"].start:%Y-%m}.csv"'
        )
        return response


class WhatIfView(APIView):
    permission_classes = [staff_only(GET=MARGINS_VIEW)]

    @extend_schema(parameters=[WhatIfQuery])
    @reporting_reads()
    def get(self, request: Request) -> Response:
        query = validated_query(WhatIfQuery, request)
        policy = None
        if "target_margin" in query or "minimum_margin" in query:
            try:
                policy = Margins(
                    query.get("target_margin", Decimal(0)), query.get("minimum_margin", Decimal(0))
                )
            except (ValueError, ArithmeticError) as exc:
                raise ValidationError({"margins": str(exc)}) from exc
        result = whatif(
            period=query["period"],
            accelerator_key=query["accelerator"],
            tenant_id=query.get("tenant"),
            alias=query.get("alias"),
            policy=policy,
        )
        return Response(whatif_data(result))


def _reconciliation_query(request: Request) -> tuple[dict[str, Any], QuerySet[ReconciliationRow]]:
    query = validated_query(ReconciliationQuery, request)
    account = query.get("account")
    rows = reconciliation_rows(
        start=query["period"].start.date(),
        end=query["period"].end.date(),
        account_id=account.pk if account else None,
        status=query.get("status"),
        upstream_model=query.get("model"),
    )
    return query, rows


@extend_schema_view(get=extend_schema(parameters=[ReconciliationQuery]))
class ReconciliationListView(ListAPIView):
    """Ledger against provider report per account, UTC day, upstream model, key and token
    class (metering.reconcile), oldest day first."""

    serializer_class = ReconciliationRowOutput
    pagination_class = DayCursorPagination
    permission_classes = [staff_only(GET=RECONCILIATION_VIEW)]

    @reporting_reads()
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[ReconciliationRow]:
        return _reconciliation_query(self.request)[1]


class ReconciliationCsvView(FileDownloadView):
    """The same rows as one CSV file (a month of one account or all, never paginated)."""

    permission_classes = [staff_only(GET=RECONCILIATION_VIEW)]

    @extend_schema(parameters=[ReconciliationQuery], responses={(200, "text/csv"): str})
    @reporting_reads()
    def get(self, request: Request) -> HttpResponse:
        query, rows = _reconciliation_query(request)
        out = io.StringIO()
        writer = SafeWriter(out)
        writer.writerow(RECONCILIATION_FIELDS)
        for row in rows.iterator(chunk_size=2000):
            writer.writerow(reconciliation_csv_values(ReconciliationRowOutput(row).data))
        account = query.get("account")
        name = f"reconciliation-{account.name if account else 'all'}-{query['period'].start:%Y-%m}"
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{_safe_filename(name)}.csv"'
        return response


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
