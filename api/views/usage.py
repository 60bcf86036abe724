"""REST views for usage: the tenant's usage records, usage summaries and series, and its
budget and balance alerts. Records, summaries and series are reporting reads
(config.db_router: the replica, when one is configured)."""

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import may_read_billing, tenant_or_staff
from api.scoping import tenant_id_for
from api.serializers.fields import validated_query
from api.serializers.usage import (
    AlertQuery,
    AlertSerializer,
    UsageQuery,
    UsageRecordSerializer,
    UsageSeriesQuery,
    UsageSeriesRowSerializer,
    UsageSummaryQuery,
    UsageSummaryRowSerializer,
)
from billing.alerts import alerts_for_tenant
from billing.permissions import ALERT_VIEW
from config.db_router import reporting_reads
from metering.permissions import USAGE_VIEW
from metering.selectors import UsageFilter, usage_records_for_tenant, usage_series, usage_summary


def _usage_filter(request: Request, query: dict[str, Any]) -> UsageFilter:
    return UsageFilter(
        tenant_id=tenant_id_for(request),
        since=query.get("since"),
        until=query.get("until"),
        api_key_id=query.get("api_key"),
        alias=query.get("alias"),
    )


@extend_schema_view(get=extend_schema(parameters=[UsageQuery]))
class UsageRecordListView(ListAPIView):
    serializer_class = UsageRecordSerializer
    permission_classes = [tenant_or_staff(GET=USAGE_VIEW)]

    @reporting_reads()
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # type: ignore[no-untyped-def]
        filters = _usage_filter(self.request, validated_query(UsageQuery, self.request))
        return usage_records_for_tenant(filters=filters).select_related("api_key")


class UsageSummaryView(APIView):
    permission_classes = [tenant_or_staff(GET=USAGE_VIEW)]

    @extend_schema(parameters=[UsageSummaryQuery], responses=UsageSummaryRowSerializer(many=True))
    @reporting_reads()
    def get(self, request: Request) -> Response:
        query = validated_query(UsageSummaryQuery, request)
        rows = usage_summary(filters=_usage_filter(request, query), group_by=query.get("group_by"))
        return Response(
            {
                "group_by": query.get("group_by"),
                "data": UsageSummaryRowSerializer(rows, many=True).data,
            }
        )


class UsageSeriesView(APIView):
    """Usage per UTC hour, day or month (for charts), flagged records included, like the
    summary; buckets without usage are left out."""

    permission_classes = [tenant_or_staff(GET=USAGE_VIEW)]

    @extend_schema(parameters=[UsageSeriesQuery], responses=UsageSeriesRowSerializer(many=True))
    @reporting_reads()
    def get(self, request: Request) -> Response:
        query = validated_query(UsageSeriesQuery, request)
        rows = usage_series(
            filters=_usage_filter(request, query),
            granularity=query["granularity"],
            group_by=query.get("group_by"),
        )
        return Response(
            {
                "granularity": query["granularity"],
                "group_by": query.get("group_by"),
                "data": UsageSeriesRowSerializer(rows, many=True).data,
            }
        )


@extend_schema_view(get=extend_schema(parameters=[AlertQuery]))
class AlertListView(ListAPIView):
    """The tenant's budget and balance alerts, newest first (a key without the billing
    scope sees no balance alerts)."""

    serializer_class = AlertSerializer
    permission_classes = [tenant_or_staff(GET=ALERT_VIEW)]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        query = validated_query(AlertQuery, self.request)
        alerts = alerts_for_tenant(
            tenant_id=tenant_id_for(self.request),
            budget=query.get("budget"),
            since=query.get("since"),
        )
        if not may_read_billing(self.request):
            alerts = alerts.exclude(budget="balance")
        return alerts
