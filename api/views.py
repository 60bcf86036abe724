"""REST API views: HTTP only. Each view validates input, calls one selector or service."""

from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import permissions as perm
from api.scoping import tenant_id_for
from api.serializers import (
    AlertQuerySerializer,
    AlertSerializer,
    UsageQuerySerializer,
    UsageRecordSerializer,
    UsageSummaryQuerySerializer,
    UsageSummaryRowSerializer,
)
from billing.alerts import alerts_for_tenant
from metering.selectors import UsageFilter, usage_records_for_tenant, usage_summary


def _usage_filter(request: Request, query: dict) -> UsageFilter:  # type: ignore[type-arg]
    return UsageFilter(
        tenant_id=tenant_id_for(request),
        since=query.get("since"),
        until=query.get("until"),
        api_key_id=query.get("api_key"),
        alias=query.get("alias"),
    )


class UsageRecordListView(ListAPIView):
    serializer_class = UsageRecordSerializer
    permission_classes = [perm.tenant_or_staff(GET=perm.USAGE_VIEW)]

    @extend_schema(parameters=[UsageQuerySerializer])
    def get(self, request: Request, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # type: ignore[no-untyped-def]
        query = UsageQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = _usage_filter(self.request, query.validated_data)
        return usage_records_for_tenant(filters=filters).select_related("api_key")


class UsageSummaryView(APIView):
    permission_classes = [perm.tenant_or_staff(GET=perm.USAGE_VIEW)]

    @extend_schema(
        parameters=[UsageSummaryQuerySerializer], responses=UsageSummaryRowSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        query = UsageSummaryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = usage_summary(
            filters=_usage_filter(request, query.validated_data),
            group_by=query.validated_data.get("group_by"),
        )
        return Response(
            {
                "group_by": query.validated_data.get("group_by"),
                "data": UsageSummaryRowSerializer(rows, many=True).data,
            }
        )


class AlertListView(ListAPIView):
    """The tenant's budget and balance alerts, newest first."""

    serializer_class = AlertSerializer
    permission_classes = [perm.tenant_or_staff(GET=perm.ALERT_VIEW)]

    @extend_schema(parameters=[AlertQuerySerializer])
    def get(self, request: Request, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # type: ignore[no-untyped-def]
        query = AlertQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return alerts_for_tenant(
            tenant_id=tenant_id_for(self.request),
            budget=query.validated_data.get("budget"),
            since=query.validated_data.get("since"),
        )
