"""Invoices to Stripe, and Stripe's webhook events back.

Push (of an invoice already finalized here): customer, then a Stripe invoice in Stripe's
draft state (auto_advance off, pending items excluded), then one invoice item per line,
then Stripe's own finalize call. Every call carries an idempotency key
derived from our own row ids, and every Stripe id is stored as soon as it is known, so a
push interrupted anywhere can simply run again.

Webhooks: verified with the stripe library's signature scheme and timestamp tolerance,
stored raw first (unique event id), then processed in a retryable transaction. Status
changes go through billing.invoicing.lifecycle.invoice_transition, which never moves an invoice
backwards: duplicate and out-of-order events are harmless.
"""

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from stripe._base_address import BaseAddresses

from billing.invoicing.close import checkpoint
from billing.invoicing.lifecycle import invoice_record_payment_failure, invoice_transition
from billing.models import Invoice, StripeCustomer, StripeEvent
from config.errors import ApplicationError
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

# Stripe ids fit the model's column; a longer one is not Stripe's.
_MAX_ID = 100
# The last second datetime can represent; a larger `created` is not a time.
_MAX_EPOCH = 253402300799


def _signed_at(header: str) -> int:
    """The ``t=`` of a ``Stripe-Signature`` header the stripe library has verified."""
    for item in header.split(","):  # read as the stripe library reads it: the first t=
        parts = item.split("=", 2)
        if parts[0] == "t" and len(parts) > 1:
            return int(parts[1])
    raise WebhookRejected("The signature has no timestamp.")  # verify_header refuses this first


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _storable(value: Any) -> bool:
    """PostgreSQL's jsonb holds neither U+0000 nor NaN or infinite numbers."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return not _has_nul(value)


def stripe_event_problem(data: Any) -> str | None:
    """Why a verified body is not a Stripe event we can apply, or None. Pure; never raises.

    Stripe's own events always pass: an object with a string `id` and `type`, an integer
    `created` and `data.object` an object; an `invoice.*` object carries its string `id`
    and, if it has our `reckon_invoice_id` in its metadata, a decimal number there."""
    if not isinstance(data, dict):
        return "The event is not a JSON object."
    if not _storable(data):
        return "The event holds NUL characters, NaN or infinite numbers."
    event_id, kind, created = data.get("id"), data.get("type"), data.get("created")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_ID:
        return f"The event has no usable id (a string of 1 to {_MAX_ID} characters)."
    if not isinstance(kind, str) or not 0 < len(kind) <= _MAX_ID:
        return f"The event has no usable type (a string of 1 to {_MAX_ID} characters)."
    if type(created) is not int or not 0 <= created <= _MAX_EPOCH:
        return "The event has no usable created time (Unix seconds)."
    body = data.get("data")
    obj = body.get("object") if isinstance(body, dict) else None
    if not isinstance(obj, dict):
        return "The event's data.object is not an object."
    if kind.startswith("invoice."):
        if not isinstance(obj.get("id"), str) or not obj["id"]:
            return "The invoice object has no id."
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return "The invoice object's metadata is not an object."
        reckon_id = (metadata or {}).get("reckon_invoice_id")
        if reckon_id is not None and not (
            isinstance(reckon_id, str)
            and reckon_id.isascii()
            and reckon_id.isdigit()
            and len(reckon_id) <= 18
        ):
            return "The invoice object's metadata.reckon_invoice_id is not an invoice id."
    return None


def _rejected_identity(data: Any, payload: bytes) -> tuple[str, str]:
    """(event id, type) to store a rejected body under: its own where usable, else the
    body's digest (so a redelivery is a duplicate) and no type."""
    fields = data if isinstance(data, dict) else {}
    event_id, kind = fields.get("id"), fields.get("type")
    if not (isinstance(event_id, str) and 0 < len(event_id) <= _MAX_ID and not _has_nul(event_id)):
        event_id = f"malformed-{hashlib.sha256(payload).hexdigest()}"
    if not (isinstance(kind, str) and not _has_nul(kind)):
        kind = ""
    return event_id, kind[:_MAX_ID]


def stripe_event_receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify and store a webhook event raw. Returns (event, newly_stored).

    A bad signature or a timestamp outside the tolerance, in the past or in the future,
    is refused (WebhookRejected, a 400: nothing stored). A correctly signed body that is
    not a usable event is stored with status rejected and the reason, and never applied."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are not configured on this server.")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Signature verification failed: {exc.user_message or exc}") from exc
    except ValueError as exc:  # not UTF-8
        raise WebhookRejected("The payload is not a Stripe event.") from exc
    # The stripe library refuses stale timestamps only; one far ahead is as suspect.
    if _signed_at(signature) > time.time() + WEBHOOK_TOLERANCE_SECONDS:
        raise WebhookRejected("Signature verification failed: timestamp is in the future.")
    text = payload.decode("utf-8")
    problem: str | None
    try:
        data: Any = json.loads(text)
    except ValueError:
        data, problem = None, "The body is not JSON."
    else:
        problem = stripe_event_problem(data)
    if problem is None:
        event_id, kind = data["id"], data["type"]
        created = datetime.fromtimestamp(data["created"], tz=UTC)
        status = StripeEvent.Status.RECEIVED
    else:
        event_id, kind = _rejected_identity(data, payload)
        created = timezone.now()
        status = StripeEvent.Status.REJECTED
        data = data if _storable(data) else None
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                event_id=event_id,
                type=kind,
                created=created,
                payload=data,
                raw_payload=text.replace("\x00", "\ufffd"),
                status=status,
                error=problem or "",
                processed_at=None if problem is None else timezone.now(),
            )
    except IntegrityError:
        return StripeEvent.objects.get(event_id=event_id), False
    if problem is not None:
        logger.warning("stripe event %s rejected: %s", event_id, problem)
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


def _invoice_for(obj: dict[str, Any]) -> tuple[Invoice | None, str]:
    """The invoice an `invoice.*` event belongs to: the one holding its Stripe invoice id.

    Metadata alone never suffices (anyone who can create a Stripe invoice can write
    metadata); when it names our invoice it must name that same one."""
    invoice = Invoice.objects.filter(stripe_invoice_id=obj["id"]).first()
    if invoice is None:
        return None, "No invoice here has this Stripe invoice id."
    reckon_id = (obj.get("metadata") or {}).get("reckon_invoice_id")
    if reckon_id is not None and int(reckon_id) != invoice.pk:
        return None, "The Stripe invoice's metadata names another invoice."
    return invoice, ""


@transaction.atomic
def stripe_event_process(*, event_pk: int) -> StripeEvent:
    """Apply one stored event. Idempotent: a processed event is not applied again."""
    event = StripeEvent.objects.select_for_update().get(pk=event_pk)
    if event.status in (
        StripeEvent.Status.PROCESSED,
        StripeEvent.Status.IGNORED,
        StripeEvent.Status.REJECTED,
    ):
        return event
    problem = stripe_event_problem(event.payload)  # rows stored before this check existed
    if problem is not None:
        event.status, event.error = StripeEvent.Status.REJECTED, problem
        event.processed_at = timezone.now()
        event.save(update_fields=["status", "error", "processed_at"])
        return event
    obj = (event.payload or {})["data"]["object"]
    invoice, why = _invoice_for(obj) if event.type.startswith("invoice.") else (None, "")
    if invoice is None:
        event.status = StripeEvent.Status.IGNORED
        event.error = why
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
