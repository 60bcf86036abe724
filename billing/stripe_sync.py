"""Invoices to Stripe, and Stripe's webhook events back.

Push: customer, then a draft Stripe invoice (auto_advance off, pending items excluded),
then one invoice item per line, then finalize. Every call carries an idempotency key
derived from our own row ids, and every Stripe id is stored as soon as it is known, so a
push interrupted anywhere can simply run again.

Webhooks: verified with the stripe library's signature scheme and timestamp tolerance,
stored raw first (unique event id), then processed in a retryable transaction. Status
changes go through billing.invoicing.invoice_transition, which never moves an invoice
backwards: duplicate and out-of-order events are harmless.
"""

import logging
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from stripe._base_address import BaseAddresses

from billing.invoicing import checkpoint, invoice_record_payment_failure, invoice_transition
from billing.models import Invoice, StripeCustomer, StripeEvent
from metering.errors import ApplicationError
from metering.models import Tenant

logger = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300  # the stripe library's default


class WebhookRejected(ApplicationError):
    code = "webhook_rejected"


def stripe_client() -> stripe.StripeClient | None:
    if not settings.STRIPE_API_KEY:
        return None
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


# --- webhooks ------------------------------------------------------------------------


def stripe_event_receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify and store a webhook event raw. Returns (event, newly_stored)."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are not configured on this server.")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Signature verification failed: {exc.user_message or exc}") from exc
    except ValueError as exc:
        raise WebhookRejected("The payload is not a Stripe event.") from exc
    data = event.to_dict() if hasattr(event, "to_dict") else dict(event)
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                event_id=event["id"],
                type=event["type"],
                created=datetime.fromtimestamp(event["created"], tz=UTC),
                payload=data,
            )
    except IntegrityError:
        return StripeEvent.objects.get(event_id=event["id"]), False
    return stored, True


_TRANSITIONS = {
    "invoice.paid": Invoice.Status.PAID,
    "invoice.voided": Invoice.Status.VOID,
    "invoice.marked_uncollectible": Invoice.Status.UNCOLLECTIBLE,
}


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


def _invoice_for(obj: dict[str, Any]) -> Invoice | None:
    reckon_id = (obj.get("metadata") or {}).get("reckon_invoice_id")
    if reckon_id:
        invoice = Invoice.objects.filter(pk=int(reckon_id)).first()
        if (
            invoice is not None
            and invoice.stripe_invoice_id
            and invoice.stripe_invoice_id != obj.get("id")
        ):
            return None  # another Stripe invoice claiming ours (a stray duplicate): ignore it
        return invoice
    return (
        Invoice.objects.filter(stripe_invoice_id=obj.get("id", ""))
        .exclude(stripe_invoice_id="")
        .first()
    )


@transaction.atomic
def stripe_event_process(*, event_pk: int) -> StripeEvent:
    """Apply one stored event. Idempotent: a processed event is not applied again."""
    event = StripeEvent.objects.select_for_update().get(pk=event_pk)
    if event.status in (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED):
        return event
    obj = event.payload.get("data", {}).get("object", {})
    invoice = _invoice_for(obj) if event.type.startswith("invoice.") else None
    if invoice is None:
        event.status = StripeEvent.Status.IGNORED
    elif event.type in _TRANSITIONS:
        target = _TRANSITIONS[event.type]
        try:
            invoice_transition(invoice=invoice, to=target, at=event.created)
            event.status = StripeEvent.Status.PROCESSED
        except ApplicationError as exc:  # e.g. paid after void: keep the terminal state
            logger.warning("stripe event %s not applied: %s", event.event_id, exc.message)
            event.status = StripeEvent.Status.IGNORED
            event.error = exc.message
    elif event.type == "invoice.payment_failed":
        invoice_record_payment_failure(invoice=invoice, at=event.created)
        event.status = StripeEvent.Status.PROCESSED
    else:
        event.status = StripeEvent.Status.IGNORED
    event.processed_at = timezone.now()
    event.save(update_fields=["status", "error", "processed_at"])
    return event
