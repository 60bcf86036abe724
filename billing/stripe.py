"""Invoices to Stripe: the push of an invoice finalized here, and the void of one voided here.

Push: customer, then a Stripe invoice in Stripe's draft state (auto_advance off, pending
items excluded), then one invoice item per line, then Stripe's own finalize call. Every
call carries an idempotency key derived from our own row ids, and every Stripe id is
stored as soon as it is known, so a push interrupted anywhere can simply run again.

The two tasks that invoicing enqueues (once its transaction commits) are defined here,
beside the services they call: invoicing imports them, and this module imports nothing
of invoicing but its fault points. Stripe's webhook events: billing/stripe_webhooks.py.

The stripe library is imported where a call is made, not at the top: it loads its HTTP
clients (aiohttp, requests), about a second of imports, and every process imports this
module (invoicing, admin, the Celery tasks) while few talk to Stripe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from billing.faults import checkpoint
from billing.models import Invoice, StripeCustomer
from config.celery import RELIABLE_TASK, TRANSIENT_ERRORS
from metering.models import Tenant

if TYPE_CHECKING:
    import stripe


class StripeUnavailable(Exception):
    """A Stripe call that may succeed when tried again: no connection, an error on Stripe's
    side, or its rate limit (the stripe library's own retries spent). The tasks retry it."""


# What a Stripe task is retried on, besides the database and network (config.celery).
STRIPE_TRANSIENT = TRANSIENT_ERRORS + (StripeUnavailable,)


@contextmanager
def _stripe_transient_as_unavailable() -> Iterator[None]:
    """Stripe's transient errors (APIConnectionError, APIError, RateLimitError) raised as
    StripeUnavailable, the original as its cause; any other error as it is."""
    import stripe

    try:
        yield
    except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as exc:
        raise StripeUnavailable(f"{type(exc).__name__}: {exc}") from exc


def stripe_client() -> stripe.StripeClient | None:
    if not settings.STRIPE_API_KEY:
        return None
    import stripe
    from stripe._base_address import BaseAddresses

    base: BaseAddresses | None = (
        {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    )
    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        base_addresses=base,
        max_network_retries=2,  # type: ignore[arg-type]
    )


def stripe_customer_ensure(*, client: stripe.StripeClient, tenant: Tenant) -> str:
    """Create or update the tenant's Stripe customer; returns its id."""
    params: dict[str, Any] = {"name": tenant.name, "metadata": {"reckon_tenant_id": str(tenant.pk)}}
    existing = StripeCustomer.objects.filter(tenant=tenant).first()
    if existing is not None:
        client.v1.customers.update(existing.stripe_customer_id, params)  # type: ignore[arg-type]
        existing.save(update_fields=["synced_at"])
        return existing.stripe_customer_id
    customer = client.v1.customers.create(
        params,  # type: ignore[arg-type]
        {"idempotency_key": f"reckon-customer-{tenant.pk}"},
    )
    try:
        StripeCustomer.objects.create(tenant=tenant, stripe_customer_id=customer.id)
    except IntegrityError:
        pass  # a concurrent push stored it first: same customer thanks to the key
    return customer.id


def invoice_sync_stripe(*, invoice_id: int) -> Invoice | None:
    """Push a finalized invoice to Stripe and finalize it there. Safe to repeat."""
    client = stripe_client()
    invoice = Invoice.objects.select_related("tenant").get(pk=invoice_id)
    if client is None or invoice.status != Invoice.Status.FINALIZED:
        return None  # only a finalized, unpaid, unvoided invoice is sent for collection
    if invoice.stripe_synced_at is not None:
        return invoice
    customer_id = stripe_customer_ensure(client=client, tenant=invoice.tenant)
    if not invoice.stripe_invoice_id:
        remote = client.v1.invoices.create(
            {
                "customer": customer_id,
                "auto_advance": False,
                "collection_method": "send_invoice",
                "days_until_due": settings.RECKON_INVOICE_NET_DAYS,
                "currency": invoice.currency.lower(),
                "pending_invoice_items_behavior": "exclude",
                "metadata": {
                    "reckon_invoice_id": str(invoice.pk),
                    "reckon_number": invoice.number or "",
                },
            },  # type: ignore[arg-type]
            {"idempotency_key": f"reckon-invoice-{invoice.pk}"},
        )
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=remote.id)
        invoice.stripe_invoice_id = remote.id
    for line in invoice.lines.filter(stripe_invoice_item_id="").order_by("position"):
        if line.amount_minor == 0:
            continue  # Stripe has no use for zero items; the PDF and API still show them
        item = client.v1.invoice_items.create(
            {
                "customer": customer_id,
                "invoice": invoice.stripe_invoice_id,
                "amount": line.amount_minor,
                "currency": invoice.currency.lower(),
                "description": line.description[:500],
                "period": {
                    "start": int(line.segment_start.timestamp()),
                    "end": int(line.segment_end.timestamp()),
                },
                "metadata": {"reckon_invoice_line_id": str(line.pk)},
            },  # type: ignore[arg-type]
            {"idempotency_key": f"reckon-invoice-line-{line.pk}"},
        )
        line.stripe_invoice_item_id = item.id
        line.save(update_fields=["stripe_invoice_item_id"])
        checkpoint("stripe_item_pushed")
    remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    if remote.status == "draft":
        client.v1.invoices.finalize_invoice(
            invoice.stripe_invoice_id,
            {"auto_advance": False},  # type: ignore[arg-type]
            {"idempotency_key": f"reckon-invoice-finalize-{invoice.pk}"},
        )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_synced_at=timezone.now())
    invoice.refresh_from_db()
    return invoice


def invoice_void_in_stripe(*, invoice_id: int) -> None:
    """Void the Stripe copy of an invoice voided here (idempotent)."""
    client = stripe_client()
    invoice = Invoice.objects.get(pk=invoice_id)
    if client is None or invoice.status != Invoice.Status.VOID or not invoice.stripe_invoice_id:
        return
    remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    if remote.status == "open":
        client.v1.invoices.void_invoice(
            invoice.stripe_invoice_id,
            options={"idempotency_key": f"reckon-invoice-void-{invoice.pk}"},
        )


# --- tasks (names fixed: queued messages use them) --------------------------------------


@shared_task(
    name="billing.tasks.sync_invoice_to_stripe", autoretry_for=STRIPE_TRANSIENT, **RELIABLE_TASK
)
def sync_invoice_to_stripe(invoice_id: int) -> None:
    with _stripe_transient_as_unavailable():
        invoice_sync_stripe(invoice_id=invoice_id)


@shared_task(
    name="billing.tasks.void_invoice_in_stripe", autoretry_for=STRIPE_TRANSIENT, **RELIABLE_TASK
)
def void_invoice_in_stripe(invoice_id: int) -> None:
    with _stripe_transient_as_unavailable():
        invoice_void_in_stripe(invoice_id=invoice_id)
