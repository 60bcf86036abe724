"""Finance and operator views for the hardware cost basis: catalogue, cost bases,
deployments, margin policies, margin reports (JSON and CSV) and the what-if."""

import csv
import io
from decimal import Decimal
from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import permissions as perm
from api.invoice_views import FileDownloadView
from api.serializers import InstantField, PeriodField, validated_query
from billing.costs import formulas
from billing.costs.catalogue import (
    CannotPrice,
    accelerator_get,
    class_costs_of,
    cost_basis_create,
    cost_basis_in_force,
    deployment_set,
    hourly_cost_of,
)
from billing.costs.margins import margin_policy_set
from billing.models import AcceleratorType, CostBasisVersion
from billing.pricing.currency import decimal_text
from billing.reports import GROUPINGS, margin_report, whatif

MONEY = {"max_digits": 38, "decimal_places": 12}


def _opt(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


class AcceleratorListView(APIView):
    permission_classes = [perm.staff_only(GET=perm.ACCELERATOR_VIEW)]

    def get(self, request: Request) -> Response:
        from django.utils import timezone

        now = timezone.now()
        out = []
        for accelerator in AcceleratorType.objects.all():
            basis = cost_basis_in_force(accelerator=accelerator, at=now)
            try:
                hourly = _opt(hourly_cost_of(basis)) if basis else None
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


class CostBasisInput(serializers.Serializer):
    mode = serializers.ChoiceField(choices=CostBasisVersion.Mode.choices)
    hourly_usd = serializers.DecimalField(**MONEY, required=False, allow_null=True)
    purchase_price_usd = serializers.DecimalField(**MONEY, required=False, allow_null=True)
    amortization_years = serializers.DecimalField(**MONEY, required=False, allow_null=True)
    power_usd_per_kwh = serializers.DecimalField(**MONEY, required=False)
    pue = serializers.DecimalField(**MONEY, required=False)
    other_opex_per_hour = serializers.DecimalField(**MONEY, required=False)
    effective_from = InstantField()
    note = serializers.CharField(max_length=300, required=False, default="")

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        """The pure cost model's own checks (amounts >= 0, amortization > 0), here so a
        basis that could never price is refused, not stored. Missing values may wait."""
        if attrs["mode"] == CostBasisVersion.Mode.RENTED:
            spec: formulas.RentedCost | formulas.OwnedCost = formulas.RentedCost(
                attrs.get("hourly_usd")
            )
        else:
            defaults = formulas.OwnedCost(None, None, None)
            spec = formulas.OwnedCost(
                purchase_price_usd=attrs.get("purchase_price_usd"),
                amortization_years=attrs.get("amortization_years"),
                tdp_watts=0,  # the accelerator's, known to be >= 0
                power_usd_per_kwh=attrs.get("power_usd_per_kwh", defaults.power_usd_per_kwh),
                pue=attrs.get("pue", defaults.pue),
                other_opex_per_hour=attrs.get("other_opex_per_hour", defaults.other_opex_per_hour),
            )
        try:
            formulas.hourly_cost(spec)
        except formulas.MissingCostData:
            pass
        except (ValueError, ArithmeticError) as exc:
            raise ValidationError({"cost_basis": str(exc)}) from exc
        return attrs


class CostBasisCreateView(APIView):
    permission_classes = [perm.staff_only(POST=perm.COST_BASIS_ADD)]

    @extend_schema(request=CostBasisInput)
    def post(self, request: Request, key: str) -> Response:
        body = CostBasisInput(data=request.data)
        body.is_valid(raise_exception=True)
        version = cost_basis_create(accelerator=accelerator_get(key), **body.validated_data)
        try:
            hourly = _opt(hourly_cost_of(version))
        except CannotPrice:
            hourly = None
        return Response(
            {"accelerator": key, "version": version.version, "hourly_usd": hourly},
            status=status.HTTP_201_CREATED,
        )


class MarginPolicyInput(serializers.Serializer):
    target_margin = serializers.DecimalField(**MONEY)
    minimum_margin = serializers.DecimalField(**MONEY)
    effective_from = InstantField()

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        try:
            formulas.Margins(attrs["target_margin"], attrs["minimum_margin"])
        except ValueError as exc:
            raise ValidationError({"margins": str(exc)}) from exc
        return attrs


class MarginPolicyCreateView(APIView):
    permission_classes = [perm.staff_only(POST=perm.MARGIN_POLICY_ADD)]

    @extend_schema(request=MarginPolicyInput)
    def post(self, request: Request, key: str) -> Response:
        body = MarginPolicyInput(data=request.data)
        body.is_valid(raise_exception=True)
        policy = margin_policy_set(accelerator=accelerator_get(key), **body.validated_data)
        return Response({"accelerator": key, "id": policy.pk}, status=status.HTTP_201_CREATED)


class DeploymentInput(serializers.Serializer):
    alias = serializers.CharField(max_length=200)
    accelerator = serializers.CharField(max_length=100)
    decode_tokens_per_s = serializers.DecimalField(**MONEY, allow_null=True)
    prefill_tokens_per_s = serializers.DecimalField(**MONEY, allow_null=True)
    utilization = serializers.DecimalField(**MONEY, default=Decimal("0.6"))
    cache_read_factor = serializers.DecimalField(**MONEY, default=Decimal("0.1"))
    cache_write_factor = serializers.DecimalField(**MONEY, default=Decimal("1.25"))
    effective_from = InstantField()

    def validate(self, attrs):  # type: ignore[no-untyped-def]
        """The pure cost model's checks (throughputs > 0, utilization in (0, 1])."""
        try:
            formulas.Throughput(
                decode_tokens_per_s=attrs["decode_tokens_per_s"],
                prefill_tokens_per_s=attrs["prefill_tokens_per_s"],
                utilization=attrs["utilization"],
                cache_read_factor=attrs["cache_read_factor"],
                cache_write_factor=attrs["cache_write_factor"],
            )
        except ValueError as exc:
            raise ValidationError({"throughput": str(exc)}) from exc
        return attrs


class DeploymentCreateView(APIView):
    permission_classes = [perm.staff_only(POST=perm.DEPLOYMENT_ADD)]

    @extend_schema(request=DeploymentInput)
    def post(self, request: Request) -> Response:
        body = DeploymentInput(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        deployment = deployment_set(accelerator=accelerator_get(data.pop("accelerator")), **data)
        basis = cost_basis_in_force(
            accelerator=deployment.accelerator, at=deployment.effective_from
        )
        costs = class_costs_of(deployment, basis).as_dict() if basis else {}
        return Response(
            {
                "alias": deployment.alias,
                "version": deployment.version,
                "cost_per_million_usd": {k: decimal_text(v) for k, v in costs.items()},
            },
            status=status.HTTP_201_CREATED,
        )


def _row_data(row) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {
        "key": list(row.key),
        "revenue_usd": decimal_text(row.revenue_usd),
        "cost_usd": decimal_text(row.cost_usd),
        "gross_margin": None
        if row.gross_margin is None
        else decimal_text(row.gross_margin.quantize(Decimal("0.000001"))),
        "reasoning_cost_usd": decimal_text(row.reasoning_cost_usd),
        "reasoning_share_of_cost": None
        if row.reasoning_share_of_cost is None
        else decimal_text(row.reasoning_share_of_cost.quantize(Decimal("0.000001"))),
        "tokens": dict(row.tokens),
    }


class MarginQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM")
    group_by = serializers.CharField(
        default=",".join(GROUPINGS), max_length=200, help_text=f"comma-separated: {GROUPINGS}"
    )

    def validate_group_by(self, value: str) -> tuple[str, ...]:
        groups = tuple(g for g in value.split(",") if g)
        if not groups or any(g not in GROUPINGS for g in groups):
            raise ValidationError(f"Comma-separated, from {', '.join(GROUPINGS)}.")
        return groups


def _margin_rows(request: Request) -> tuple[dict[str, Any], list]:  # type: ignore[type-arg]
    q = validated_query(MarginQuery, request)
    return q, margin_report(period=q["period"], group_by=q["group_by"])


class MarginReportView(APIView):
    permission_classes = [perm.staff_only(GET=perm.MARGINS_VIEW)]

    @extend_schema(parameters=[MarginQuery])
    def get(self, request: Request) -> Response:
        query, rows = _margin_rows(request)
        return Response({"group_by": list(query["group_by"]), "rows": [_row_data(r) for r in rows]})


class MarginReportCsvView(FileDownloadView):
    permission_classes = [perm.staff_only(GET=perm.MARGINS_VIEW)]

    @extend_schema(parameters=[MarginQuery])
    def get(self, request: Request) -> HttpResponse:
        query, rows = _margin_rows(request)
        groups = query["group_by"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                *groups,
                "revenue_usd",
                "cost_usd",
                "gross_margin",
                "reasoning_cost_usd",
                "reasoning_share_of_cost",
            ]
        )
        for r in rows:
            d = _row_data(r)
            writer.writerow(
                [
                    *r.key,
                    d["revenue_usd"],
                    d["cost_usd"],
                    d["gross_margin"],
                    d["reasoning_cost_usd"],
                    d["reasoning_share_of_cost"],
                ]
            )
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="margins-{query["period"].start:%Y-%m}.csv"'
        )
        return response


class WhatIfQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM")
    accelerator = serializers.CharField(max_length=100)
    tenant = serializers.UUIDField(required=False)
    alias = serializers.CharField(max_length=200, required=False)
    target_margin = serializers.DecimalField(**MONEY, required=False)
    minimum_margin = serializers.DecimalField(**MONEY, required=False)


class WhatIfView(APIView):
    permission_classes = [perm.staff_only(GET=perm.MARGINS_VIEW)]

    @extend_schema(parameters=[WhatIfQuery])
    def get(self, request: Request) -> Response:
        q = validated_query(WhatIfQuery, request)
        policy = None
        if "target_margin" in q or "minimum_margin" in q:
            try:
                policy = formulas.Margins(
                    q.get("target_margin", Decimal(0)), q.get("minimum_margin", Decimal(0))
                )
            except (ValueError, ArithmeticError) as exc:
                raise ValidationError({"margins": str(exc)}) from exc
        result = whatif(
            period=q["period"],
            accelerator_key=q["accelerator"],
            tenant_id=q.get("tenant"),
            alias=q.get("alias"),
            policy=policy,
        )
        return Response(
            {
                "scope": result.scope,
                "tokens": result.tokens,
                "revenue_usd": decimal_text(result.revenue_usd),
                "actual": {
                    "cost_usd": decimal_text(result.actual_cost_usd),
                    "gross_margin": _opt(result.actual_margin),
                },
                "alternative": {
                    "accelerator": result.alternative_accelerator,
                    "cost_usd": decimal_text(result.alternative_cost_usd),
                    "cost_per_million_usd": {
                        alias: {k: decimal_text(v) for k, v in costs.items()}
                        for alias, costs in result.alternative_class_costs.items()
                    },
                    "gross_margin": _opt(result.alternative_margin),
                    "floor_revenue_usd": decimal_text(result.floor_revenue_usd),
                    "target_revenue_usd": decimal_text(result.target_revenue_usd),
                    "policy": {
                        "target_margin": decimal_text(result.policy.target_margin),
                        "minimum_margin": decimal_text(result.policy.minimum_margin),
                    },
                },
            }
        )
