"""Celery tasks: each takes ids and ISO dates and calls one service; idempotency lives in
the services. Periodic tasks only fan out, and take `as_of` so a run can be replayed.

Tasks import services; services never import this module (they enqueue through
billing/enqueue.py, by the names registered here), so there is no cycle."""

import uuid
from datetime import datetime

import stripe
from celery import Task, shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from billing.alerts import (
    AlertDeliveryFailed,
    alert_deliver,
    alert_delivery_give_up,
    alerts_evaluate,
    alerts_evaluate_all,
)
from billing.balances import credits_expire
from billing.enqueue import ALERT_DELIVER, SYNC_INVOICE_TO_STRIPE, VOID_INVOICE_IN_STRIPE
from billing.invoicing.close import period_close, periods_close_or_each, periods_due
from billing.models import Invoice
from billing.stripe import invoice_sync_stripe, invoice_void_in_stripe, stripe_event_process
from config.celery import RELIABLE_TASK
from metering.ledger import SpoolPending, spool_guard

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
# A close waits (retried with backoff) while any ledger writer holds unreplayed spool.
CLOSE_TRANSIENT = TRANSIENT + (SpoolPending,)


def _when(iso: str | None) -> datetime:
    return datetime.fromisoformat(iso) if iso else timezone.now()


@shared_task(autoretry_for=(SpoolPending,), **RELIABLE_TASK)
def close_due_periods(as_of: str | None = None) -> int:
    """Fan out the (tenant, period) pairs that are due, in batches of
    RECKON_CLOSE_BATCH_SIZE tenants per close task (one transaction each). Nothing is
    fanned out while a ledger writer reports unreplayed spool (retried with backoff)."""
    spool_guard(spool_dir=settings.RECKON_LEDGER_SPOOL_DIR, redis_url=settings.REDIS_URL)
    when = _when(as_of)
    by_period: dict[datetime, list[str]] = {}
    for item in periods_due(as_of=when):
        by_period.setdefault(item.period_start, []).append(str(item.tenant_id))
    size = settings.RECKON_CLOSE_BATCH_SIZE
    batches = 0
    with close_periods.app.producer_or_acquire() as producer:  # one connection for the fan-out
        for period_start, tenants in sorted(by_period.items()):
            for i in range(0, len(tenants), size):
                close_periods.apply_async(
                    (period_start.isoformat(), tenants[i : i + size], when.isoformat()),
                    producer=producer,
                )
                batches += 1
    return batches


@shared_task(autoretry_for=CLOSE_TRANSIENT, **RELIABLE_TASK)
def close_periods(period_start: str, tenant_ids: list[str], as_of: str | None = None) -> int:
    return len(
        periods_close_or_each(
            tenant_ids=tenant_ids,
            period_start=datetime.fromisoformat(period_start),
            as_of=_when(as_of),
        )
    )


@shared_task(autoretry_for=CLOSE_TRANSIENT, **RELIABLE_TASK)
def close_period(tenant_id: str, period_start: str, as_of: str | None = None) -> int:
    """Close one tenant's period. Nothing enqueues it since closes run in batches
    (`close_periods`); it stays one release for messages already queued."""
    invoice = period_close(
        tenant_id=uuid.UUID(tenant_id),
        period_start=datetime.fromisoformat(period_start),
        as_of=_when(as_of),
    )
    return invoice.pk


STRIPE_TRANSIENT = TRANSIENT + (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)


@shared_task(name=SYNC_INVOICE_TO_STRIPE, autoretry_for=STRIPE_TRANSIENT, **RELIABLE_TASK)
def sync_invoice_to_stripe(invoice_id: int) -> None:
    invoice_sync_stripe(invoice_id=invoice_id)


@shared_task(**RELIABLE_TASK)
def sync_pending_invoices() -> int:
    """Fan out: push every finalized invoice Stripe has not fully received yet."""
    if not settings.STRIPE_API_KEY:
        return 0
    pending = list(
        Invoice.objects.filter(
            status=Invoice.Status.FINALIZED, stripe_synced_at__isnull=True
        ).values_list("pk", flat=True)
    )
    for invoice_id in pending:
        sync_invoice_to_stripe.delay(invoice_id)
    return len(pending)


@shared_task(autoretry_for=TRANSIENT, **RELIABLE_TASK)
def process_stripe_event(event_pk: int) -> str:
    return stripe_event_process(event_pk=event_pk).status


@shared_task(name=VOID_INVOICE_IN_STRIPE, autoretry_for=STRIPE_TRANSIENT, **RELIABLE_TASK)
def void_invoice_in_stripe(invoice_id: int) -> None:
    invoice_void_in_stripe(invoice_id=invoice_id)


@shared_task(**RELIABLE_TASK)
def expire_credits(as_of: str | None = None) -> int:
    """Periodic: write off what is left of grants no invoice can draw on any more."""
    return credits_expire(as_of=_when(as_of))


# --- budget and balance alerts -----------------------------------------------------------


@shared_task(name="billing.alerts_evaluate", autoretry_for=TRANSIENT, **RELIABLE_TASK)
def alerts_evaluate_task(tenant_id: str, as_of: str | None = None) -> int:
    """Record the thresholds one tenant has crossed (the proxy sends this by name)."""
    return len(alerts_evaluate(tenant_id=uuid.UUID(tenant_id), at=_when(as_of)))


@shared_task(name="billing.alerts_sweep", **RELIABLE_TASK)
def alerts_sweep(as_of: str | None = None) -> int:
    """Periodic: evaluate every tenant that has a budget (catches what the proxy missed)."""
    return alerts_evaluate_all(_when(as_of))


ALERT_DELIVERY_TASK = RELIABLE_TASK | {"retry_backoff_max": 600, "max_retries": 8}


@shared_task(
    bind=True,
    name=ALERT_DELIVER,
    autoretry_for=TRANSIENT + (AlertDeliveryFailed,),
    **ALERT_DELIVERY_TASK,
)
def alert_deliver_task(self: Task, alert_id: int) -> str:
    """Send one alert's webhook; retried with backoff, marked failed when retries run out."""
    try:
        return alert_deliver(alert_id=alert_id)
    except AlertDeliveryFailed:
        if self.max_retries is not None and self.request.retries >= self.max_retries:
            alert_delivery_give_up(alert_id=alert_id)  # this was the last attempt
        raise
