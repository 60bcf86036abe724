"""Celery tasks: each takes ids and ISO dates and calls one service; idempotency lives in
the services. Periodic tasks only fan out, and take `as_of` so a run can be replayed.

The tasks a service enqueues are defined beside that service, so the service imports the
task object with no cycle: the Stripe push and void in billing.stripe, processing a
Stripe event in billing.stripe_webhooks, alert delivery in billing.alert_delivery. This
module holds the periodic fan-outs and the tasks only outside callers send; it imports
every task module, so a worker (which autodiscovers `<app>.tasks`) and eager mode (this
module is imported by BillingConfig.ready) know every billing task by its name."""

import uuid
from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.utils import timezone

# Imported for their tasks' registration (process_stripe_event, alert_deliver).
import billing.alert_delivery  # noqa: F401
import billing.stripe_webhooks  # noqa: F401
from billing.alerts import alerts_evaluate, alerts_evaluate_all
from billing.balances import credits_expire
from billing.invoicing.close import period_close, periods_close_or_each, periods_due
from billing.models import Invoice
from billing.stripe import sync_invoice_to_stripe
from config.celery import RELIABLE_TASK, TRANSIENT_ERRORS
from metering.ledger import SpoolPending, spool_guard

# A close waits (retried with backoff) while any ledger writer holds unreplayed spool.
CLOSE_TRANSIENT = TRANSIENT_ERRORS + (SpoolPending,)


def _when(iso: str | None) -> datetime:
    return datetime.fromisoformat(iso) if iso else timezone.now()


@shared_task(name="billing.tasks.close_due_periods", autoretry_for=(SpoolPending,), **RELIABLE_TASK)
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


@shared_task(name="billing.tasks.close_periods", autoretry_for=CLOSE_TRANSIENT, **RELIABLE_TASK)
def close_periods(period_start: str, tenant_ids: list[str], as_of: str | None = None) -> int:
    return len(
        periods_close_or_each(
            tenant_ids=tenant_ids,
            period_start=datetime.fromisoformat(period_start),
            as_of=_when(as_of),
        )
    )


@shared_task(name="billing.tasks.close_period", autoretry_for=CLOSE_TRANSIENT, **RELIABLE_TASK)
def close_period(tenant_id: str, period_start: str, as_of: str | None = None) -> int:
    """Close one tenant's period. Nothing enqueues it since closes run in batches
    (`close_periods`); it stays one release for messages already queued."""
    invoice = period_close(
        tenant_id=uuid.UUID(tenant_id),
        period_start=datetime.fromisoformat(period_start),
        as_of=_when(as_of),
    )
    return invoice.pk


@shared_task(name="billing.tasks.sync_pending_invoices", **RELIABLE_TASK)
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


@shared_task(name="billing.tasks.expire_credits", **RELIABLE_TASK)
def expire_credits(as_of: str | None = None) -> int:
    """Periodic: write off what is left of grants no invoice can draw on any more."""
    return credits_expire(as_of=_when(as_of))


# --- budget and balance alerts -----------------------------------------------------------


@shared_task(name="billing.alerts_evaluate", autoretry_for=TRANSIENT_ERRORS, **RELIABLE_TASK)
def alerts_evaluate_task(tenant_id: str, as_of: str | None = None) -> int:
    """Record the thresholds one tenant has crossed (sent by `alerts_evaluate_soon`)."""
    return len(alerts_evaluate(tenant_id=uuid.UUID(tenant_id), at=_when(as_of)))


@shared_task(name="billing.alerts_sweep", **RELIABLE_TASK)
def alerts_sweep(as_of: str | None = None) -> int:
    """Periodic: evaluate every tenant that has a budget (catches what the proxy missed)."""
    return alerts_evaluate_all(_when(as_of))


def alerts_evaluate_soon(tenant_id: uuid.UUID) -> None:
    """Metering's "alert thresholds may have been crossed" handler (registered by
    BillingConfig.ready): evaluate the tenant's alerts in a task, off the proxy's path."""
    alerts_evaluate_task.delay(str(tenant_id))
