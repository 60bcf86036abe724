"""Invoices pushed to Stripe through the real stripe SDK, against a local fake Stripe."""

from datetime import UTC, datetime

import pytest
from celery.exceptions import Retry

from billing.faults import InjectedFault
from billing.invoicing.close import period_close
from billing.models import Invoice, StripeCustomer
from billing.plans import subscription_create
from billing.stripe import (
    StripeUnavailable,
    invoice_sync_stripe,
    sync_invoice_to_stripe,
    void_invoice_in_stripe,
)
from tests import stripe_helpers
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, use, version

pytestmark = pytest.mark.django_db


fake = stripe_helpers.fake  # the fake Stripe server, one per module
stripe_on = stripe_helpers.stripe_on


def closed_invoice() -> Invoice:
    key = ApiKeyFactory(tenant__name="Acme Reasoning GmbH")
    subscription_create(
        tenant=key.tenant, plan_version=version("standard", base="10", output="4.00"), starts_at=SEP
    )
    use(key, datetime(2026, 9, 5, tzinfo=UTC), output_tokens=1_000_000, reasoning_tokens=3_000_000)
    return period_close(
        tenant_id=key.tenant_id, period_start=SEP, as_of=datetime(2026, 10, 3, tzinfo=UTC)
    )


def test_push_creates_customer_items_and_finalizes(stripe_on) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    synced = invoice_sync_stripe(invoice_id=invoice.pk)
    assert synced is not None and synced.stripe_synced_at is not None
    remote = stripe_on.invoices[synced.stripe_invoice_id]
    assert remote["status"] == "open" and remote["auto_advance"] is False
    assert remote["total"] == invoice.total_minor == 1000 + 400 + 600
    assert remote["metadata"]["reckon_invoice_id"] == str(invoice.pk)
    (customer,) = stripe_on.customers.values()
    assert customer["name"] == "Acme Reasoning GmbH"
    assert StripeCustomer.objects.get().stripe_customer_id == customer["id"]
    items = sorted(i["amount"] for i in stripe_on.invoice_items.values())
    assert items == [400, 600, 1000]  # zero lines are not sent
    keys = [c.idempotency_key for c in stripe_on.calls if c.method == "POST"]
    assert (
        f"reckon-invoice-{invoice.pk}" in keys and f"reckon-invoice-finalize-{invoice.pk}" in keys
    )
    calls = len(stripe_on.calls)
    invoice_sync_stripe(invoice_id=invoice.pk)  # already synced: no call at all
    assert len(stripe_on.calls) == calls


def test_lost_responses_and_dropped_connections_are_retried_with_the_same_keys(stripe_on) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    stripe_on.fail_next(1, status=500, commit=True)  # the customer is created, its response lost
    synced = invoice_sync_stripe(invoice_id=invoice.pk)
    assert synced is not None and synced.stripe_synced_at is not None
    replays = [c for c in stripe_on.calls if c.replayed]
    assert [c.idempotency_key for c in replays] == [f"reckon-customer-{invoice.tenant_id}"]
    assert len(stripe_on.customers) == 1 and len(stripe_on.invoice_items) == 3


def test_push_crashing_mid_way_resumes_without_duplicates(stripe_on, settings) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    settings.RECKON_FAULT_POINTS = frozenset({"stripe_item_pushed"})
    with pytest.raises(InjectedFault):  # the worker dies after the first invoice item
        invoice_sync_stripe(invoice_id=invoice.pk)
    assert len(stripe_on.invoice_items) == 1
    settings.RECKON_FAULT_POINTS = frozenset()
    synced = invoice_sync_stripe(invoice_id=invoice.pk)
    assert synced is not None and synced.stripe_synced_at is not None
    assert len(stripe_on.customers) == 1 and len(stripe_on.invoices) == 1
    assert len(stripe_on.invoice_items) == 3
    assert stripe_on.invoices[synced.stripe_invoice_id]["total"] == invoice.total_minor


def test_without_a_stripe_key_nothing_calls_stripe(fake, settings) -> None:  # type: ignore[no-untyped-def]
    fake.reset()
    settings.STRIPE_API_KEY = ""
    invoice = closed_invoice()
    assert invoice_sync_stripe(invoice_id=invoice.pk) is None
    assert fake.calls == [] and invoice.number == "RK-2026-000001"


def test_only_finalized_invoices_are_pushed_and_local_voids_reach_stripe(
    stripe_on, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    from billing.invoicing.lifecycle import invoice_transition

    invoice = closed_invoice()
    voided = invoice_transition(invoice=invoice, to="void")
    assert invoice_sync_stripe(invoice_id=voided.pk) is None and stripe_on.calls == []
    second = closed_invoice_for_new_tenant()
    invoice_sync_stripe(invoice_id=second.pk)
    with django_capture_on_commit_callbacks(execute=True):
        invoice_transition(invoice=second, to="void")
    remote = stripe_on.invoices[Invoice.objects.get(pk=second.pk).stripe_invoice_id]
    assert remote["status"] == "void"


def closed_invoice_for_new_tenant() -> Invoice:
    from tests.usage_helpers import write_usage

    key = ApiKeyFactory(tenant__name="Second Tenant")
    subscription_create(
        tenant=key.tenant, plan_version=version("second", base="10", output="4.00"), starts_at=SEP
    )
    write_usage(key, datetime(2026, 9, 5, tzinfo=UTC), output_tokens=1_000_000)
    return period_close(
        tenant_id=key.tenant_id, period_start=SEP, as_of=datetime(2026, 10, 3, tzinfo=UTC)
    )


def test_prepaid_credit_reaches_stripe_as_a_negative_item(stripe_on) -> None:  # type: ignore[no-untyped-def]
    from decimal import Decimal

    from billing.balances import balance_credit

    key = ApiKeyFactory()
    subscription_create(
        tenant=key.tenant, plan_version=version("standard", base="10", output="4.00"), starts_at=SEP
    )
    balance_credit(
        tenant_id=key.tenant_id,
        kind="top_up",
        amount=Decimal("12.34"),
        idempotency_key="prepaid",
        effective_at=SEP,
    )
    use(key, datetime(2026, 9, 5, tzinfo=UTC), output_tokens=1_000_000)
    invoice = period_close(
        tenant_id=key.tenant_id, period_start=SEP, as_of=datetime(2026, 10, 3, tzinfo=UTC)
    )
    assert invoice.total_minor == 1000 + 400 - 1234
    synced = invoice_sync_stripe(invoice_id=invoice.pk)
    assert synced is not None
    remote = stripe_on.invoices[synced.stripe_invoice_id]
    assert remote["total"] == invoice.total_minor == 166
    assert sorted(i["amount"] for i in stripe_on.invoice_items.values()) == [-1234, 400, 1000]


@pytest.mark.parametrize(
    ("status", "calls", "error"),
    # calls: the first and the stripe client's own retries (two; none for a plain 429)
    [(500, 3, "APIError"), (429, 1, "RateLimitError"), (0, 3, "APIConnectionError")],
    ids=["server-error", "rate-limited", "connection-dropped"],
)
def test_the_push_task_retries_when_stripe_stays_unavailable(  # type: ignore[no-untyped-def]
    stripe_on, status, calls, error
) -> None:
    import stripe

    invoice = closed_invoice()
    stripe_on.fail_next(calls, status=status)
    with pytest.raises(Retry) as retry:
        sync_invoice_to_stripe.apply(args=[invoice.pk])
    assert isinstance(retry.value.exc, StripeUnavailable)
    assert type(retry.value.exc.__cause__) is getattr(stripe, error)
    sync_invoice_to_stripe.apply(args=[invoice.pk])  # the retry, Stripe back
    invoice.refresh_from_db()
    assert invoice.stripe_synced_at is not None
    assert stripe_on.invoices[invoice.stripe_invoice_id]["status"] == "open"


def test_the_push_task_does_not_retry_what_is_not_transient(stripe_on) -> None:  # type: ignore[no-untyped-def]
    import stripe

    invoice = closed_invoice()
    stripe_on.fail_next(1, status=402)  # a card error: raised as it is, no retry
    with pytest.raises(stripe.CardError):
        sync_invoice_to_stripe.apply(args=[invoice.pk])


def test_the_void_task_retries_when_stripe_stays_unavailable(stripe_on) -> None:  # type: ignore[no-untyped-def]
    from billing.invoicing.lifecycle import invoice_transition

    invoice = closed_invoice()
    invoice_sync_stripe(invoice_id=invoice.pk)
    invoice_transition(invoice=invoice, to="void")  # its own push is not run here
    stripe_on.fail_next(3, status=500)
    with pytest.raises(Retry) as retry:
        void_invoice_in_stripe.apply(args=[invoice.pk])
    assert isinstance(retry.value.exc, StripeUnavailable)
    void_invoice_in_stripe.apply(args=[invoice.pk])  # the retry, Stripe back
    remote = stripe_on.invoices[Invoice.objects.get(pk=invoice.pk).stripe_invoice_id]
    assert remote["status"] == "void"
