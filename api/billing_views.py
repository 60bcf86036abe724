"""REST views for plans, subscriptions, pricing quotes, the live invoice preview and
prepaid balances (tenants read their own; operators add credits and set the hard stop)."""

import uuid
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import billing_serializers as s
from api import permissions as perm
from api.authentication import TenantPrincipal
from api.scoping import tenant_id_for
from api.serializers import validated_query
from billing.balances import balance_credit, balance_hard_stop_set, balance_state, credits_of
from billing.models import BalanceAccount, BalanceEntry, Plan, PlanVersion, Subscription
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_issues,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from billing.pricing.plan import UsageVector
from billing.pricing.rate import rate
from billing.rating import invoice_preview
from billing.selectors import plan_version_pricing, plan_version_queryset
from metering.models import Tenant

NO_BALANCE = "This tenant has no prepaid balance."
STAFF_TENANT = OpenApiParameter("tenant", str, description="staff only: the tenant id")


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
    permission_classes = [perm.tenant_or_staff(GET=perm.INVOICE_VIEW)]

    @extend_schema(summary="The current period's rated lines and totals, live")
    def get(self, request: Request) -> Response:
        return Response(s.period_rating_data(invoice_preview(tenant_id=tenant_id_for(request))))


class QuoteView(APIView):
    """Price any usage vector against a plan version (sales, what-if). Tenants may quote
    published versions; staff any version."""

    permission_classes = [perm.tenant_or_staff(POST=perm.PLAN_VERSION_VIEW)]

    @extend_schema(request=s.QuoteInput)
    def post(self, request: Request) -> Response:
        body = s.QuoteInput(data=request.data)
        body.is_valid(raise_exception=True)
        version = _version_or_404(body.validated_data["plan_version"])
        if not version.is_published and isinstance(request.user, TenantPrincipal):
            raise NotFound("No such plan version.")
        usage: dict[tuple[str, str], int] = {}
        for item in body.validated_data["usage"]:
            key = (item["alias"], item["token_class"])
            usage[key] = usage.get(key, 0) + item["tokens"]
        rated = rate(plan_version_pricing(version), UsageVector(usage))
        return Response({"plan_version": version.pk, **s.rated_invoice_data(rated)})


class PlanListCreateView(APIView):
    permission_classes = [perm.staff_only(GET=perm.PLAN_VIEW, POST=perm.PLAN_ADD)]

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
    permission_classes = [perm.staff_only(POST=perm.PLAN_VERSION_ADD)]

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
    permission_classes = [perm.staff_only(GET=perm.PLAN_VERSION_VIEW)]

    @extend_schema(responses=s.PlanVersionOutput)
    def get(self, request: Request, version_id: int) -> Response:
        return Response(_version_data(_version_or_404(version_id)))


class PlanVersionPublishView(APIView):
    permission_classes = [perm.staff_only(POST=perm.PLAN_VERSION_PUBLISH)]

    @extend_schema(request=None, responses=s.PlanVersionOutput)
    def post(self, request: Request, version_id: int) -> Response:
        version = plan_version_publish(version=_version_or_404(version_id))
        return Response(_version_data(_version_or_404(version.pk)))


class SubscriptionListCreateView(APIView):
    permission_classes = [perm.staff_only(GET=perm.SUBSCRIPTION_VIEW, POST=perm.SUBSCRIPTION_ADD)]

    @extend_schema(parameters=[s.SubscriptionQuery], responses=s.SubscriptionOutput(many=True))
    def get(self, request: Request) -> Response:
        query = validated_query(s.SubscriptionQuery, request)
        subs = Subscription.objects.all()
        if tenant := query.get("tenant"):
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
    permission_classes = [perm.staff_only(POST=perm.SUBSCRIPTION_CHANGE)]

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


# --- prepaid balances ------------------------------------------------------------------


def _tenant_or_404(tenant_id: uuid.UUID) -> Tenant:
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise NotFound("No such tenant.")
    return tenant


def _account_or_404(tenant_id: uuid.UUID) -> BalanceAccount:
    account = BalanceAccount.objects.filter(tenant_id=tenant_id).first()
    if account is None:
        raise NotFound(NO_BALANCE)
    return account


def _balance_data(tenant_id: uuid.UUID) -> dict[str, Any]:
    account = _account_or_404(tenant_id)
    state = balance_state(tenant_id)
    assert state is not None  # accounts are never deleted (PROTECT)
    return s.balance_data(state, credits_of([account.pk]))


def _credit_data(entry: BalanceEntry) -> dict[str, Any]:
    credit = next(c for c in credits_of([entry.account_id]) if c.entry_id == entry.pk)
    return dict(s.CreditOutput(credit).data)


class BalanceView(APIView):
    permission_classes = [perm.tenant_or_staff(GET=perm.BALANCE_VIEW)]

    @extend_schema(
        summary="The prepaid balance: available credits, uninvoiced spend, what remains",
        parameters=[STAFF_TENANT],
        responses=s.BalanceOutput,
    )
    def get(self, request: Request) -> Response:
        return Response(_balance_data(tenant_id_for(request)))


class BalanceEntryListView(ListAPIView):
    """The balance ledger, newest first: credits, their consumption by invoices, expiries
    and reversals."""

    serializer_class = s.BalanceEntryOutput
    permission_classes = [perm.tenant_or_staff(GET=perm.BALANCE_ENTRY_VIEW)]

    @extend_schema(parameters=[STAFF_TENANT])
    def get(self, request: Request, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[BalanceEntry]:
        account = _account_or_404(tenant_id_for(self.request))
        return BalanceEntry.objects.filter(account=account).select_related("invoice")


class TenantCreditListCreateView(APIView):
    """Operators add top-ups and grants to a tenant's balance (opened on the first one)."""

    permission_classes = [perm.staff_only(GET=perm.BALANCE_VIEW, POST=perm.CREDIT_GRANT)]

    @extend_schema(responses=s.CreditOutput(many=True))
    def get(self, request: Request, tenant_id: uuid.UUID) -> Response:
        _tenant_or_404(tenant_id)
        accounts = BalanceAccount.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True)
        return Response(s.CreditOutput(credits_of(accounts), many=True).data)

    @extend_schema(
        request=s.CreditInput,
        responses={201: s.CreditOutput, 200: s.CreditOutput},
        description="201 when the credit is added; 200 with the same credit when the "
        "idempotency key is replayed with the same terms; 409 when it was used for other terms.",
    )
    def post(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant = _tenant_or_404(tenant_id)
        body = s.CreditInput(data=request.data)
        body.is_valid(raise_exception=True)
        entry, created = balance_credit(tenant_id=tenant.pk, **body.validated_data)
        return Response(
            _credit_data(entry), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TenantBalanceView(APIView):
    permission_classes = [perm.staff_only(GET=perm.BALANCE_VIEW, PATCH=perm.HARD_STOP_CHANGE)]

    @extend_schema(responses=s.BalanceOutput)
    def get(self, request: Request, tenant_id: uuid.UUID) -> Response:
        _tenant_or_404(tenant_id)
        return Response(_balance_data(tenant_id))

    @extend_schema(
        request=s.BalanceSettingsInput,
        responses=s.BalanceOutput,
        description="Set whether the balance stops calls; opens the balance if the tenant "
        "has none.",
    )
    def patch(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant = _tenant_or_404(tenant_id)
        body = s.BalanceSettingsInput(data=request.data)
        body.is_valid(raise_exception=True)
        balance_hard_stop_set(
            tenant_id=tenant.pk,
            hard_stop=body.validated_data["hard_stop"],
            currency=body.validated_data.get("currency"),
        )
        return Response(_balance_data(tenant.pk))
