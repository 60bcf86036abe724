"""Period close: the steps that turn a tenant's period into an issued invoice, in ONE
transaction, ending in ``invoice_finalize`` (gapless numbers, lines, credits applied).

Invariants:
- one live (non-void) invoice per (tenant, period): a database constraint;
- `periods_close` runs every step in ONE transaction: a crash anywhere inside leaves
  nothing behind, and running it again gives the same invoice, number and totals;
  running it after success returns the existing invoice unchanged;
- a finalized invoice never changes; later usage for its period is billed on a later
  invoice as an adjustment line naming the period; money corrections are credit notes
  (billing/invoicing/lifecycle.py);
- late usage is billed exactly once, on the next invoice, as adjustment lines found by a
  commit watermark (billing/invoicing/adjustments.py);
- every line's amount can be recomputed from the raw ledger (billing/invoicing/recompute.py).
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.balances import CreditApplication, credits_consume, credits_for_invoices
from billing.faults import checkpoint
from billing.invoicing.adjustments import late_usage_adjustments
from billing.invoicing.lines import invoice_lines_from_rating
from billing.invoicing.numbering import next_numbers
from billing.models import Invoice, InvoiceLine, Subscription
from billing.period_rating import PeriodRating, period_rate, usage_from_rollups
from billing.pricing.periods import Period, period_containing
from billing.stripe import sync_invoice_to_stripe
from config.errors import ApplicationError, NotFound
from metering.ledger import SpoolPending, spool_guard
from metering.models import Tenant
from metering.selectors import (
    NO_USAGE,
    usage_totals_by_tenant,
    usage_watermark,
)

Status = Invoice.Status


logger = logging.getLogger(__name__)


class NotDue(ApplicationError):
    code = "period_not_due"


def period_close(
    *,
    tenant_id: uuid.UUID,
    period_start: datetime,
    as_of: datetime | None = None,
) -> Invoice:
    """Build and finalize one tenant's invoice for a period (see `periods_close`)."""
    (invoice,) = periods_close(tenant_ids=[tenant_id], period_start=period_start, as_of=as_of)
    return invoice


@transaction.atomic
def periods_close(
    *,
    tenant_ids: Sequence[uuid.UUID | str],
    period_start: datetime,
    as_of: datetime | None = None,
) -> list[Invoice]:
    """Build and finalize the invoices of many tenants for the period starting at
    `period_start`, in ONE transaction, with set-based queries (returned in tenant order).

    Safe to run twice: a tenant whose period already has a finalized invoice gets that
    invoice back, untouched. A crash anywhere leaves nothing behind, and the numbers
    taken are given back, so a re-run issues the same numbers. A period is closed only
    once its grace period (RECKON_INVOICE_GRACE_HOURS) is over."""
    as_of = as_of or timezone.now()
    ids = sorted({uuid.UUID(str(t)) for t in tenant_ids})
    # One close (or plan change) per tenant at a time; the live-invoice constraint backs it.
    locked = list(
        Tenant.objects.select_for_update()
        .filter(pk__in=ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if len(locked) != len(ids):
        raise NotFound("Unknown tenant(s): " + ", ".join(str(t) for t in set(ids) - set(locked)))
    same_period: dict[uuid.UUID, list[Invoice]] = {}
    for invoice in Invoice.objects.filter(tenant_id__in=ids, period_start=period_start).order_by(
        "id"
    ):
        same_period.setdefault(invoice.tenant_id, []).append(invoice)
    done = {
        t: i for t, invoices in same_period.items() for i in invoices if i.status != Status.VOID
    }
    todo = [t for t in ids if t not in done]
    if not todo:
        return [done[t] for t in ids]
    # Usage spooled by a writer while the database was away belongs on these invoices:
    # refuse to close (the task retries) until every writer reports its spool loaded.
    spool_guard(spool_dir=settings.RECKON_LEDGER_SPOOL_DIR, redis_url=settings.REDIS_URL)

    subscriptions = _subscriptions_around(tenant_ids=todo, period_start=period_start)
    period = _period_due(subscriptions=subscriptions, period_start=period_start, as_of=as_of)
    # Taken before any rollup is read: what committed below it is in these ratings; what
    # commits at or above it is found as late usage at the next close.
    watermark = usage_watermark()
    ratings = _ratings(subscriptions=subscriptions, period=period)
    adjustments = late_usage_adjustments(tenant_ids=todo, before=period, watermark=watermark)
    lines = {
        t: invoice_lines_from_rating(ratings[t], watermark) + adjustments.get(t, []) for t in todo
    }
    credits = credits_for_invoices(
        lines=lines, currencies={t: ratings[t].currency for t in todo}, period=period
    )
    checkpoint("after_lines")
    done |= invoice_finalize(
        period=period,
        ratings=ratings,
        lines=lines,
        credits=credits,
        replacing=same_period,
        watermark=watermark,
        as_of=as_of,
    )
    checkpoint("after_finalize")
    return [done[t] for t in ids]


def _subscriptions_around(
    *, tenant_ids: list[uuid.UUID], period_start: datetime
) -> dict[uuid.UUID, list[Subscription]]:
    """Each tenant's subscriptions that may overlap the period starting at `period_start`
    (oldest first), keyed in `tenant_ids` order (invoice numbers follow it); NotFound
    naming every tenant without one."""
    subscriptions: dict[uuid.UUID, list[Subscription]] = {}
    for s in (
        Subscription.objects.filter(
            tenant_id__in=tenant_ids, starts_at__lt=period_start + timedelta(days=32)
        )
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=period_start))
        .select_related("plan_version__plan")
        .order_by("starts_at")
    ):
        subscriptions.setdefault(s.tenant_id, []).append(s)
    missing = [t for t in tenant_ids if t not in subscriptions]
    if missing:
        raise NotFound(f"No subscription at {period_start:%Y-%m-%d} for tenant(s) {missing}.")
    return {t: subscriptions[t] for t in tenant_ids}  # in the callers' order


def _period_due(
    *,
    subscriptions: dict[uuid.UUID, list[Subscription]],
    period_start: datetime,
    as_of: datetime,
) -> Period:
    """The one period every tenant's anchor day starts at `period_start`, if it is due
    (ended, and its grace period over at `as_of`)."""
    anchors = {t: subs[0].anchor_day for t, subs in subscriptions.items()}
    period = period_containing(next(iter(anchors.values())), period_start)
    for t, anchor_day in anchors.items():
        if period_containing(anchor_day, period_start) != period:
            raise ApplicationError(f"{period_start:%Y-%m-%d %H:%M} is not a period start for {t}.")
    grace = timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS)
    if period.end + grace > as_of:
        raise NotDue(f"Period {period.label} closes after its grace period ({grace}).")
    return period


def _ratings(
    *, subscriptions: dict[uuid.UUID, list[Subscription]], period: Period
) -> dict[uuid.UUID, PeriodRating]:
    """Rate each tenant's period. Tenants on one plan for the whole period are rated from
    one bulk usage query; the others segment by segment from the rollups."""
    tenants = list(subscriptions)
    usage = usage_totals_by_tenant(tenant_ids=tenants, start=period.start, end=period.end)
    ratings: dict[uuid.UUID, PeriodRating] = {}
    for t in tenants:
        subs = [s for s in subscriptions[t] if s.starts_at < period.end]
        whole = (
            len(subs) == 1
            and subs[0].starts_at <= period.start
            and (subs[0].ends_at is None or subs[0].ends_at >= period.end)
        )
        ratings[t] = period_rate(
            tenant_id=t,
            period=period,
            subscriptions=subs,
            usage_source=(lambda tenant, _s, _e: usage.get(tenant, NO_USAGE))
            if whole
            else usage_from_rollups,
        )
    return ratings


def invoice_finalize(
    *,
    period: Period,
    ratings: dict[uuid.UUID, PeriodRating],
    lines: dict[uuid.UUID, list[InvoiceLine]],
    credits: dict[uuid.UUID, CreditApplication],
    replacing: dict[uuid.UUID, list[Invoice]],
    watermark: int,
    as_of: datetime,
) -> dict[uuid.UUID, Invoice]:
    """Issue one finalized invoice per rated tenant: take gapless numbers, write the
    invoices and their lines, consume the credits applied, and queue the Stripe push for
    after commit. The last step of `periods_close`, inside its transaction (numbers are
    only taken inside one). An invoice re-issued after a void names the one it replaces
    (`replacing`: the tenant's earlier invoices for the period)."""
    tenants = list(ratings)
    issue_date = as_of.date()
    numbers = next_numbers(
        prefix=settings.RECKON_INVOICE_PREFIX, year=issue_date.year, count=len(tenants)
    )
    issued: dict[uuid.UUID, Invoice] = {}
    for t, number in zip(tenants, numbers, strict=True):
        subtotal = sum(line.amount_minor for line in lines[t])
        earlier = replacing.get(t, [])
        replaced = {i.replaces_id for i in earlier}
        voided = [i for i in earlier if i.status == Status.VOID and i.pk not in replaced]
        issued[t] = Invoice(
            tenant_id=t,
            period_start=period.start,
            replaces=voided[-1] if voided else None,
            period_end=period.end,
            currency=ratings[t].currency,
            status=Status.FINALIZED,
            number=number,
            subtotal_minor=subtotal,
            tax_minor=0,
            total_minor=subtotal,
            issue_date=issue_date,
            due_date=issue_date + timedelta(days=settings.RECKON_INVOICE_NET_DAYS),
            usage_cutoff_record_id=ratings[t].cutoff_record_id,
            usage_watermark=watermark,
            finalized_at=as_of,
        )
    Invoice.objects.bulk_create(issued.values())
    all_lines = []
    for t in tenants:
        for position, line in enumerate(lines[t]):
            line.invoice = issued[t]
            line.position = position
            all_lines.append(line)
    InvoiceLine.objects.bulk_create(all_lines)
    credits_consume(applied=credits, invoices=issued)
    if settings.STRIPE_API_KEY:
        for invoice in issued.values():
            transaction.on_commit(partial(sync_invoice_to_stripe.delay, invoice.pk))
    return issued


class CloseFailed(ApplicationError):
    code = "period_close_failed"


def periods_close_or_each(
    *, tenant_ids: Sequence[uuid.UUID | str], period_start: datetime, as_of: datetime
) -> list[Invoice]:
    """Close a batch in one transaction; if the batch fails, close each tenant on its own,
    so one broken tenant cannot hold back the others. Raises CloseFailed naming every
    tenant that still failed (the others are closed and stay closed)."""
    try:
        return periods_close(tenant_ids=list(tenant_ids), period_start=period_start, as_of=as_of)
    except (OperationalError, SpoolPending):
        raise  # the database itself, or spool not loaded yet: retry the task as a whole
    except Exception:
        if len(tenant_ids) == 1:
            raise
        logger.exception("batch close of %d tenants failed; closing one by one", len(tenant_ids))
    closed, failed = [], {}
    for tenant_id in tenant_ids:
        try:
            closed.append(
                period_close(
                    tenant_id=uuid.UUID(str(tenant_id)), period_start=period_start, as_of=as_of
                )
            )
        except (OperationalError, SpoolPending):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded and raised below, loudly
            failed[str(tenant_id)] = getattr(exc, "message", None) or repr(exc)
    if failed:
        raise CloseFailed(f"{len(failed)} tenant(s) could not be closed.", {"failures": failed})
    return closed


@dataclass(frozen=True)
class DuePeriod:
    tenant_id: uuid.UUID
    period_start: datetime


def periods_due(*, as_of: datetime) -> list[DuePeriod]:
    """Every (tenant, period) that ended at least the grace period before `as_of`,
    overlaps a subscription, and has no live invoice."""
    cut = as_of - timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS)
    invoiced = set(
        Invoice.objects.exclude(status=Status.VOID).values_list("tenant_id", "period_start")
    )
    by_tenant: dict[uuid.UUID, list[Subscription]] = {}
    for subscription in Subscription.objects.filter(starts_at__lt=cut).order_by("starts_at"):
        by_tenant.setdefault(subscription.tenant_id, []).append(subscription)
    due = []
    for tenant_id, subs in by_tenant.items():
        period = period_containing(subs[0].anchor_day, subs[0].starts_at)
        while period.end <= cut:
            covered = any(
                s.starts_at < period.end and (s.ends_at is None or s.ends_at > period.start)
                for s in subs
            )
            if covered and (tenant_id, period.start) not in invoiced:
                due.append(DuePeriod(tenant_id, period.start))
            period = period_containing(subs[0].anchor_day, period.end)
    return due
