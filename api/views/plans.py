"""REST views for plans, plan versions, subscriptions and pricing quotes. Plans and
subscriptions are for staff; tenants may quote published plan versions."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.authentication import TenantPrincipal
from api.permissions import staff_only, tenant_or_staff
from api.scoping import tenant_or_404
from api.serializers.fields import validated_body, validated_query
from api.serializers.plans import (
    ChangePlanInput,
    PlanInput,
    PlanOutput,
    PlanVersionInput,
    PlanVersionOutput,
    QuoteInput,
    SubscriptionInput,
    SubscriptionOutput,
    SubscriptionQuery,
    issues_data,
    rated_invoice_data,
)
from billing.models import Plan, PlanVersion, Subscription
from billing.permissions import (
    PLAN_ADD,
    PLAN_VERSION_ADD,
    PLAN_VERSION_PUBLISH,
    PLAN_VERSION_VIEW,
    PLAN_VIEW,
    SUBSCRIPTION_ADD,
    SUBSCRIPTION_CHANGE,
    SUBSCRIPTION_VIEW,
)
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_issues,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from billing.pricing.priced_plan import UsageVector
from billing.pricing.rate import rate
from billing.selectors import plan_version_pricing, plan_version_queryset


def _version_or_404(pk: int) -> PlanVersion:
    version = plan_version_queryset().filter(pk=pk).first()
    if version is None:
        raise NotFound("No such plan version.")
    return version


def _version_data(version: PlanVersion) -> dict:  # type: ignore[type-arg]
    return {
        **PlanVersionOutput(version).data,
        "issues": issues_data(plan_version_issues(version=version)),
    }


class QuoteView(APIView):
    """Price any usage vector against a plan version (sales, what-if). Tenants may quote
    published versions; staff any version."""

    permission_classes = [tenant_or_staff(POST=PLAN_VERSION_VIEW)]

    @extend_schema(request=QuoteInput)
    def post(self, request: Request) -> Response:
        body = validated_body(QuoteInput, request)
        version = _version_or_404(body["plan_version"])
        if not version.is_published and isinstance(request.user, TenantPrincipal):
            raise NotFound("No such plan version.")
        usage: dict[tuple[str, str], int] = {}
        for item in body["usage"]:
            key = (item["alias"], item["token_class"])
            usage[key] = usage.get(key, 0) + item["tokens"]
        rated = rate(plan_version_pricing(version), UsageVector(usage))
        return Response({"plan_version": version.pk, **rated_invoice_data(rated)})


class PlanListCreateView(APIView):
    permission_classes = [staff_only(GET=PLAN_VIEW, POST=PLAN_ADD)]

    @extend_schema(responses=PlanOutput(many=True))
    def get(self, request: Request) -> Response:
        plans = Plan.objects.prefetch_related("versions")
        return Response(PlanOutput(plans, many=True).data)

    @extend_schema(request=PlanInput, responses=PlanOutput)
    def post(self, request: Request) -> Response:
        plan = plan_create(**validated_body(PlanInput, request))
        return Response(PlanOutput(plan).data, status=status.HTTP_201_CREATED)


class PlanVersionCreateView(APIView):
    permission_classes = [staff_only(POST=PLAN_VERSION_ADD)]

    @extend_schema(request=PlanVersionInput, responses=PlanVersionOutput)
    def post(self, request: Request, plan_id: int) -> Response:
        plan = Plan.objects.filter(pk=plan_id).first()
        if plan is None:
            raise NotFound("No such plan.")
        version = plan_version_create(plan=plan, **validated_body(PlanVersionInput, request))
        return Response(_version_data(_version_or_404(version.pk)), status=status.HTTP_201_CREATED)


class PlanVersionDetailView(APIView):
    permission_classes = [staff_only(GET=PLAN_VERSION_VIEW)]

    @extend_schema(responses=PlanVersionOutput)
    def get(self, request: Request, version_id: int) -> Response:
        return Response(_version_data(_version_or_404(version_id)))


class PlanVersionPublishView(APIView):
    permission_classes = [staff_only(POST=PLAN_VERSION_PUBLISH)]

    @extend_schema(request=None, responses=PlanVersionOutput)
    def post(self, request: Request, version_id: int) -> Response:
        version = plan_version_publish(version=_version_or_404(version_id))
        return Response(_version_data(_version_or_404(version.pk)))


class SubscriptionListCreateView(APIView):
    permission_classes = [staff_only(GET=SUBSCRIPTION_VIEW, POST=SUBSCRIPTION_ADD)]

    @extend_schema(parameters=[SubscriptionQuery], responses=SubscriptionOutput(many=True))
    def get(self, request: Request) -> Response:
        query = validated_query(SubscriptionQuery, request)
        subs = Subscription.objects.all()
        if tenant := query.get("tenant"):
            subs = subs.filter(tenant_id=tenant)
        return Response(SubscriptionOutput(subs, many=True).data)

    @extend_schema(request=SubscriptionInput, responses=SubscriptionOutput)
    def post(self, request: Request) -> Response:
        body = validated_body(SubscriptionInput, request)
        subscription = subscription_create(
            tenant=tenant_or_404(body["tenant"]),
            plan_version=_version_or_404(body["plan_version"]),
            starts_at=body["starts_at"],
            anchor_day=body["anchor_day"],
        )
        return Response(SubscriptionOutput(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionChangePlanView(APIView):
    permission_classes = [staff_only(POST=SUBSCRIPTION_CHANGE)]

    @extend_schema(request=ChangePlanInput, responses=SubscriptionOutput)
    def post(self, request: Request, subscription_id: int) -> Response:
        body = validated_body(ChangePlanInput, request)
        subscription = Subscription.objects.filter(pk=subscription_id).first()
        if subscription is None:
            raise NotFound("No such subscription.")
        new = subscription_change_plan(
            subscription=subscription,
            plan_version=_version_or_404(body["plan_version"]),
            at=body["at"],
        )
        return Response(SubscriptionOutput(new).data, status=status.HTTP_201_CREATED)
