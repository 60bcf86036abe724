"""Stripe's webhook events: verified, stored raw, then applied by a task.

Verified with the stripe library's signature scheme and timestamp tolerance, stored raw
first (unique event id), then processed in a retryable transaction by the task below,
which `stripe_event_receive` enqueues once the event is committed. Status changes go
through billing.invoicing.lifecycle.invoice_transition, which never moves an invoice
backwards: duplicate and out-of-order events are harmless.
"""

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.invoicing.lifecycle import invoice_record_payment_failure, invoice_transition
from billing.models import Invoice, StripeEvent
from config.celery import RELIABLE_TASK, TRANSIENT_ERRORS
from config.errors import ApplicationError

logger = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300  # the stripe library's default


# An event still to apply: newly stored, or a redelivery of one whose processing failed.
_TO_PROCESS = (StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED)


class WebhookRejected(ApplicationError):
    code = "webhook_rejected"


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
    not a usable event is stored with status rejected and the reason, and never applied.
    An event still to apply (new, or a redelivery of one whose processing failed) is
    handed to `process_stripe_event` once the caller's transaction commits."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are not configured on this server.")
    import stripe  # here, not at the top: see billing.stripe's docstring

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
    else:
        event_id, kind = _rejected_identity(data, payload)
        created = timezone.now()
        data = data if _storable(data) else None
    event, newly_stored = _stored(
        event_id=event_id, kind=kind, created=created, data=data, text=text, problem=problem
    )
    if event.status in _TO_PROCESS:
        transaction.on_commit(partial(process_stripe_event.delay, event.pk))
    return event, newly_stored


def _stored(
    *,
    event_id: str,
    kind: str,
    created: datetime,
    data: Any,
    text: str,
    problem: str | None,
) -> tuple[StripeEvent, bool]:
    """The event stored raw (status received, or rejected with the problem); the row
    already stored under its id for a redelivery. Returns (event, newly_stored)."""
    status = StripeEvent.Status.RECEIVED if problem is None else StripeEvent.Status.REJECTED
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


@shared_task(
    name="billing.tasks.process_stripe_event", autoretry_for=TRANSIENT_ERRORS, **RELIABLE_TASK
)
def process_stripe_event(event_pk: int) -> str:
    return stripe_event_process(event_pk=event_pk).status
