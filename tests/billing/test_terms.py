"""What billing tells the proxy (`tenant_terms`, read by compiled queries) is what the ORM
reads before them said (`reference_terms`, verbatim), through a prepaid tenant's life:
no plan, a plan, a webhook, credits, usage, a close that draws, a void that gives back."""

import uuid
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.alerts import DEFAULT_THRESHOLDS, thresholds_of
from billing.balances import (
    Credit,
    Kind,
    available_at,
    balance_account_open,
    balance_credit,
    balance_hard_stop_set,
    uninvoiced_spend,
)
from billing.invoicing.close import period_close
from billing.invoicing.lifecycle import invoice_transition
from billing.models import BalanceAccount, BalanceEntry, Invoice, WebhookEndpoint
from billing.plans import subscription_create
from billing.selectors import plan_version_pricing, subscription_current
from billing.terms import plan_rules, spend_rates, tenant_terms
from metering.control.terms import TenantTerms
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import OCT, SEP, at, use, version

pytestmark = pytest.mark.django_db
ALIASES = ["chat", "reasoner"]


# --- the ORM reads before compiled queries, verbatim (commit 51417f1) ------------------


def reference_terms(tenant_id: uuid.UUID, aliases: list[str]) -> TenantTerms:
    subscription = subscription_current(tenant_id=tenant_id, at=timezone.now())
    version = subscription.plan_version if subscription else None
    endpoint = WebhookEndpoint.objects.filter(tenant_id=tenant_id, is_active=True).first()
    return TenantTerms(
        spend_rates=spend_rates(plan_version_pricing(version), aliases) if version else {},
        reasoning=plan_rules(version) if version else None,
        monthly_reasoning_tokens=version.monthly_reasoning_tokens if version else None,
        reasoning_refuse=bool(version and version.reasoning_mode == "refuse"),
        balance=reference_balance(tenant_id),
        alert_thresholds=thresholds_of(endpoint.thresholds) if endpoint else DEFAULT_THRESHOLDS,
    )


def reference_balance(tenant_id: uuid.UUID):  # type: ignore[no-untyped-def]
    account = BalanceAccount.objects.filter(tenant_id=tenant_id, hard_stop=True).first()
    if account is None:
        return None
    invoices = Invoice.objects.filter(tenant_id=tenant_id).aggregate(
        last=Max("pk"), voided=Count("pk", filter=Q(status=Invoice.Status.VOID))
    )
    draws = BalanceEntry.objects.filter(
        account_id=account.pk, kind__in=[Kind.CONSUMPTION, Kind.REVERSAL]
    ).aggregate(last=Max("pk"))
    epoch = f"{invoices['last'] or 0}.{invoices['voided']}.{draws['last'] or 0}"
    watermark = (
        Invoice.objects.filter(tenant_id=tenant_id, number__isnull=False)
        .exclude(status=Invoice.Status.VOID)
        .aggregate(end=Max("period_end"))["end"]
    )
    rows = BalanceEntry.objects.filter(
        account_id__in=[account.pk], kind__in=BalanceEntry.CREDIT_KINDS
    ).annotate(drawn=Coalesce(Sum("draws__amount"), Decimal(0)))
    credits = [
        Credit(e.pk, e.kind, e.amount, e.amount + e.drawn, e.effective_at, e.expires_at)
        for e in rows
    ]
    return (
        available_at(credits, timezone.now()),
        epoch,
        uninvoiced_spend(tenant_id, watermark),
    )


def assert_same_terms(tenant_id: uuid.UUID) -> None:
    ours, theirs = tenant_terms(tenant_id, ALIASES), reference_terms(tenant_id, ALIASES)
    balance = ours.balance
    assert (
        None if balance is None else (balance.available, balance.epoch, balance.load_used())
    ) == theirs.balance
    assert (
        ours.spend_rates,
        ours.reasoning,
        ours.monthly_reasoning_tokens,
        ours.reasoning_refuse,
        ours.alert_thresholds,
    ) == (
        theirs.spend_rates,
        theirs.reasoning,
        theirs.monthly_reasoning_tokens,
        theirs.reasoning_refuse,
        theirs.alert_thresholds,
    )


def test_terms_are_what_the_orm_reads_said_through_a_prepaid_life() -> None:
    key = ApiKeyFactory()
    tenant = key.tenant_id
    assert_same_terms(tenant)  # no plan, no balance, no webhook
    standard = version("standard", base="10", output="4.00")
    subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
    WebhookEndpoint.objects.create(
        tenant=key.tenant, url="https://e.test/h", secret="s", thresholds=[90], is_active=False
    )
    balance_account_open(tenant_id=tenant)
    with time_machine.travel(at(2026, 9, 2), tick=False):
        assert_same_terms(tenant)  # a plan, an empty balance, an inactive webhook
    WebhookEndpoint.objects.filter(tenant=key.tenant).update(is_active=True, thresholds=[75, 95])
    balance_credit(
        tenant_id=tenant,
        kind="top_up",
        amount=Decimal("5.00"),
        idempotency_key="top",
        effective_at=at(2026, 9, 1),
    )
    balance_credit(
        tenant_id=tenant,
        kind="grant",
        amount=Decimal("20.00"),
        idempotency_key="promo",
        effective_at=at(2026, 9, 1),
        expires_at=at(2026, 10, 15),
    )
    use(key, at(2026, 9, 3), output_tokens=1_000_000, spend_usd=Decimal("4"))
    with time_machine.travel(at(2026, 9, 20), tick=False):
        assert_same_terms(tenant)
    september = period_close(tenant_id=tenant, period_start=SEP, as_of=at(2026, 10, 3))
    with time_machine.travel(at(2026, 10, 20), tick=False):
        assert_same_terms(tenant)  # drawn by an invoice; the grant expired since
    use(key, at(2026, 10, 2), output_tokens=500_000)
    period_close(tenant_id=tenant, period_start=OCT, as_of=at(2026, 11, 3))
    invoice_transition(invoice=september, to="void")
    with time_machine.travel(at(2026, 11, 5), tick=False):
        assert_same_terms(tenant)  # a void gave a draw back
        balance_hard_stop_set(tenant_id=tenant, hard_stop=False)
        assert_same_terms(tenant)  # a balance that does not stop calls
        assert tenant_terms(tenant, ALIASES).balance is None
