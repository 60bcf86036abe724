"""Celery tasks: each takes ids and ISO dates and calls one service; idempotency lives in
the services. Periodic tasks only fan out, and take `as_of` so a run can be replayed."""

from datetime import datetime

import stripe
from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from billing.invoicing import periods_due
from config.celery import RELIABLE_TASK

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)


def _when(iso: str | None) -> datetime:
    return datetime.fromisoformat(iso) if iso else timezone.now()


@shared_task(**RELIABLE_TASK)
def close_due_periods(as_of: str | None = None) -> int:
    """Fan out: one close_period task per (tenant, period) that is due."""
    when = _when(as_of)
    due = periods_due(as_of=when)
    with close_period.app.producer_or_acquire() as producer:  # one connection for the fan-out
        for item in due:
            close_period.apply_async(
                (str(item.tenant_id), item.period_start.isoformat(), when.isoformat()),
                producer=producer,
            )
    return len(due)


@shared_task(autoretry_for=TRANSIENT, **RELIABLE_TASK)
def close_period(tenant_id: str, period_start: str, as_of: str | None = None) -> int:
    from billing.invoicing import period_close

    invoice = period_close(
        tenant_id=tenant_id, period_start=datetime.fromisoformat(period_start), as_of=_when(as_of)
    )
    return invoice.pk


STRIPE_TRANSIENT = TRANSIENT + (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)


@shared_task(autoretry_for=STRIPE_TRANSIENT, **RELIABLE_TASK)
def sync_invoice_to_stripe(invoice_id: int) -> None:
    from billing.stripe_sync import invoice_sync_stripe

    invoice_sync_stripe(invoice_id=invoice_id)


@shared_task(**RELIABLE_TASK)
def sync_pending_invoices() -> int:
    """Fan out: push every finalized invoice Stripe has not fully received yet."""
    from django.conf import settings

    from billing.models import Invoice

    if not settings.STRIPE_API_KEY:
        return 0
    pending = list(
        Invoice.objects.exclude(status=Invoice.Status.DRAFT)
        .filter(stripe_synced_at__isnull=True)
        .values_list("pk", flat=True)
    )
    for invoice_id in pending:
        sync_invoice_to_stripe.delay(invoice_id)
    return len(pending)


@shared_task(autoretry_for=TRANSIENT, **RELIABLE_TASK)
def process_stripe_event(event_pk: int) -> str:
    from billing.stripe_sync import stripe_event_process

    return stripe_event_process(event_pk=event_pk).status
