"""REST views for plans, subscriptions, pricing quotes and the live invoice preview."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import billing_serializers as s
from api.scoping import tenant_id_for
from billing import pricing
from billing.models import Plan, PlanVersion, Subscription
from billing.selectors import plan_version_pricing, plan_version_queryset
from billing.services import (
    invoice_preview,
    plan_create,
    plan_version_create,
    plan_version_issues,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from metering.models import Tenant


def _version_or_404(pk: int) -> PlanVersion:
    version = plan_version_queryset().filter(pk=pk).first()
    if version is None:
        raise NotFound("No such plan version.")
    return version


def _version_data(version: PlanVersion) -> dict:  # type: ignore[type-arg]
    return {
        **s.PlanVersionOutput(version).data,
        "issues": s.issues_data(plan_version_issues(version=version)),
    }


class UpcomingInvoiceView(APIView):
    @extend_schema(summary="The current period's rated lines and totals, live")
    def get(self, request: Request) -> Response:
        return Response(s.period_rating_data(invoice_preview(tenant_id=tenant_id_for(request))))


class QuoteView(APIView):
    """Price any usage vector against a plan version (sales, what-if). Tenants may quote
    published versions; staff any version."""

    @extend_schema(request=s.QuoteInput)
    def post(self, request: Request) -> Response:
        body = s.QuoteInput(data=request.data)
        body.is_valid(raise_exception=True)
        version = _version_or_404(body.validated_data["plan_version"])
        if not version.is_published and not request.user.is_staff:
            raise NotFound("No such plan version.")
        usage: dict[tuple[str, str], int] = {}
        for item in body.validated_data["usage"]:
            key = (item["alias"], item["token_class"])
            usage[key] = usage.get(key, 0) + item["tokens"]
        rated = pricing.rate(plan_version_pricing(version), pricing.UsageVector(usage))
        return Response({"plan_version": version.pk, **s.rated_invoice_data(rated)})


class PlanListCreateView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=s.PlanOutput(many=True))
    def get(self, request: Request) -> Response:
        plans = Plan.objects.prefetch_related("versions")
        return Response(s.PlanOutput(plans, many=True).data)

    @extend_schema(request=s.PlanInput, responses=s.PlanOutput)
    def post(self, request: Request) -> Response:
        body = s.PlanInput(data=request.data)
        body.is_valid(raise_exception=True)
        plan = plan_create(**body.validated_data)
        return Response(s.PlanOutput(plan).data, status=status.HTTP_201_CREATED)


class PlanVersionCreateView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=s.PlanVersionInput, responses=s.PlanVersionOutput)
    def post(self, request: Request, plan_id: int) -> Response:
        plan = Plan.objects.filter(pk=plan_id).first()
        if plan is None:
            raise NotFound("No such plan.")
        body = s.PlanVersionInput(data=request.data)
        body.is_valid(raise_exception=True)
        version = plan_version_create(plan=plan, **body.validated_data)
        return Response(_version_data(_version_or_404(version.pk)), status=status.HTTP_201_CREATED)


class PlanVersionDetailView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=s.PlanVersionOutput)
    def get(self, request: Request, version_id: int) -> Response:
        return Response(_version_data(_version_or_404(version_id)))


class PlanVersionPublishView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses=s.PlanVersionOutput)
    def post(self, request: Request, version_id: int) -> Response:
        version = plan_version_publish(version=_version_or_404(version_id))
        return Response(_version_data(_version_or_404(version.pk)))


class SubscriptionListCreateView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=s.SubscriptionOutput(many=True))
    def get(self, request: Request) -> Response:
        subs = Subscription.objects.all()
        if tenant := request.query_params.get("tenant"):
            subs = subs.filter(tenant_id=tenant)
        return Response(s.SubscriptionOutput(subs, many=True).data)

    @extend_schema(request=s.SubscriptionInput, responses=s.SubscriptionOutput)
    def post(self, request: Request) -> Response:
        body = s.SubscriptionInput(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        tenant = Tenant.objects.filter(pk=data["tenant"]).first()
        if tenant is None:
            raise NotFound("No such tenant.")
        subscription = subscription_create(
            tenant=tenant,
            plan_version=_version_or_404(data["plan_version"]),
            starts_at=data["starts_at"],
            anchor_day=data["anchor_day"],
        )
        return Response(s.SubscriptionOutput(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionChangePlanView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=s.ChangePlanInput, responses=s.SubscriptionOutput)
    def post(self, request: Request, subscription_id: int) -> Response:
        body = s.ChangePlanInput(data=request.data)
        body.is_valid(raise_exception=True)
        subscription = Subscription.objects.filter(pk=subscription_id).first()
        if subscription is None:
            raise NotFound("No such subscription.")
        new = subscription_change_plan(
            subscription=subscription,
            plan_version=_version_or_404(body.validated_data["plan_version"]),
            at=body.validated_data["at"],
        )
        return Response(s.SubscriptionOutput(new).data, status=status.HTTP_201_CREATED)
