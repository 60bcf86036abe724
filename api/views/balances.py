"""REST views for prepaid balances: tenants read their own balance and its ledger;
operators add credits and set the hard stop."""

import uuid
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import BILLING_SCOPE, staff_only, tenant_or_staff
from api.scoping import tenant_id_for, tenant_or_404
from api.serializers.balances import (
    BalanceEntryOutput,
    BalanceOutput,
    BalanceSettingsInput,
    CreditInput,
    CreditOutput,
    balance_data,
)
from api.serializers.fields import validated_body
from billing.balances import balance_credit, balance_hard_stop_set, balance_state, credits_of
from billing.models import BalanceAccount, BalanceEntry
from billing.permissions import (
    BALANCE_ENTRY_VIEW,
    BALANCE_VIEW,
    CREDIT_GRANT,
    HARD_STOP_CHANGE,
)

STAFF_TENANT = OpenApiParameter("tenant", str, description="staff only: the tenant id")


def _account_or_404(tenant_id: uuid.UUID) -> BalanceAccount:
    account = BalanceAccount.objects.filter(tenant_id=tenant_id).first()
    if account is None:
        raise NotFound("This tenant has no prepaid balance.")
    return account


def _balance_data(tenant_id: uuid.UUID) -> dict[str, Any]:
    account = _account_or_404(tenant_id)
    state = balance_state(tenant_id)
    assert state is not None  # accounts are never deleted (PROTECT)
    return balance_data(state, credits_of([account.pk]))


def _credit_data(entry: BalanceEntry) -> dict[str, Any]:
    credit = next(c for c in credits_of([entry.account_id]) if c.entry_id == entry.pk)
    return dict(CreditOutput(credit).data)


class BalanceView(APIView):
    permission_classes = [tenant_or_staff(GET=BALANCE_VIEW, key_scope=BILLING_SCOPE)]

    @extend_schema(
        summary="The prepaid balance: available credits, uninvoiced spend, what remains",
        parameters=[STAFF_TENANT],
        responses=BalanceOutput,
    )
    def get(self, request: Request) -> Response:
        return Response(_balance_data(tenant_id_for(request)))


@extend_schema_view(get=extend_schema(parameters=[STAFF_TENANT]))
class BalanceEntryListView(ListAPIView):
    """The balance ledger, newest first: credits, their consumption by invoices, expiries
    and reversals."""

    serializer_class = BalanceEntryOutput
    permission_classes = [tenant_or_staff(GET=BALANCE_ENTRY_VIEW, key_scope=BILLING_SCOPE)]

    def get_queryset(self) -> QuerySet[BalanceEntry]:
        account = _account_or_404(tenant_id_for(self.request))
        return BalanceEntry.objects.filter(account=account).select_related("invoice")


class TenantCreditListCreateView(APIView):
    """Operators add top-ups and grants to a tenant's balance (opened on the first one)."""

    permission_classes = [staff_only(GET=BALANCE_VIEW, POST=CREDIT_GRANT)]

    @extend_schema(responses=CreditOutput(many=True))
    def get(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant_or_404(tenant_id)
        accounts = BalanceAccount.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True)
        return Response(CreditOutput(credits_of(accounts), many=True).data)

    @extend_schema(
        request=CreditInput,
        responses={201: CreditOutput, 200: CreditOutput},
        description="201 when the credit is added; 200 with the same credit when the "
        "idempotency key is replayed with the same terms; 409 when it was used for other terms.",
    )
    def post(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant = tenant_or_404(tenant_id)
        entry, created = balance_credit(tenant_id=tenant.pk, **validated_body(CreditInput, request))
        return Response(
            _credit_data(entry), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TenantBalanceView(APIView):
    permission_classes = [staff_only(GET=BALANCE_VIEW, PATCH=HARD_STOP_CHANGE)]

    @extend_schema(responses=BalanceOutput)
    def get(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant_or_404(tenant_id)
        return Response(_balance_data(tenant_id))

    @extend_schema(
        request=BalanceSettingsInput,
        responses=BalanceOutput,
        description="Set whether the balance stops calls; opens the balance if the tenant "
        "has none.",
    )
    def patch(self, request: Request, tenant_id: uuid.UUID) -> Response:
        tenant = tenant_or_404(tenant_id)
        body = validated_body(BalanceSettingsInput, request)
        balance_hard_stop_set(
            tenant_id=tenant.pk, hard_stop=body["hard_stop"], currency=body.get("currency")
        )
        return Response(_balance_data(tenant.pk))
