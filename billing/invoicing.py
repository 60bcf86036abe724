"""Invoices: period close, finalization with gapless numbers, late-usage adjustments,
status transitions, credit notes, and recomputation from the raw ledger.

Invariants:
- one live (non-void) invoice per (tenant, period): a database constraint;
- `period_close` builds the invoice and finalizes it in ONE transaction: a crash anywhere
  inside leaves nothing behind, and running it again gives the same invoice, number and
  totals; running it after success returns the existing invoice unchanged;
- a finalized invoice never changes; later usage for its period is billed on a later
  invoice as an adjustment line naming the period; money corrections are credit notes;
- late usage is found by a commit watermark, not by record id (ids are assigned at
  INSERT and commit out of order across writers): every invoice and line keeps the
  `usage_watermark` taken before its rollups were read; a rollup changed by a
  transaction at or above it may be missing from it and its period is re-rated at the
  next close; every change below it was included. The adjustment is the re-rated total
  minus everything billed for the period, so late usage is billed exactly once;
- every line's amount can be recomputed from the raw ledger (`invoice_recompute`).
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Max, Q, Sum
from django.utils import timezone

from billing import pricing
from billing.balances import credits_consume, credits_for_invoices, credits_restore
from billing.currency import decimal_text, from_minor
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    Subscription,
)
from billing.periods import Period, period_containing
from billing.services import PeriodRating, period_rate, usage_from_rollups
from config.errors import ApplicationError, Conflict, NotFound
from metering.ledger import SpoolPending, spool_guard
from metering.models import Tenant
from metering.selectors import (
    BilledWindow,
    UsageTotals,
    usage_totals,
    usage_watermark,
    windows_with_usage_after,
)

Status = Invoice.Status
Kind = InvoiceLine.Kind


logger = logging.getLogger(__name__)
STORED_PRECISION = Decimal("1e-12")
NO_USAGE = UsageTotals({}, 0)
NONE = (0, 0)  # (record cut-off, watermark) of a period no adjustment billed yet


class NotDue(ApplicationError):
    code = "period_not_due"


class InjectedFault(RuntimeError):
    """Raised at a named checkpoint when a test asks for a crash there."""


def checkpoint(name: str) -> None:
    if name in settings.RECKON_FAULT_POINTS:
        raise InjectedFault(f"injected fault at {name}")


# --- numbering -----------------------------------------------------------------------


def next_numbers(*, prefix: str, year: int, count: int) -> list[str]:
    """Take the next `count` gapless numbers in one statement. It must run inside the
    transaction that uses them: the sequence row stays locked until that transaction
    ends, and a rollback gives the numbers back."""
    assert connection.in_atomic_block, "numbers are taken inside the finalizing transaction"
    table = InvoiceSequence._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (prefix, year, last_number) VALUES (%s, %s, %s)"  # noqa: S608
            f" ON CONFLICT (prefix, year) DO UPDATE SET last_number = {table}.last_number + %s"
            " RETURNING last_number",
            [prefix, year, count, count],
        )
        (last,) = cursor.fetchone()
    return [f"{prefix}-{year}-{n:06d}" for n in range(last - count + 1, last + 1)]


def next_number(*, prefix: str, year: int) -> str:
    (number,) = next_numbers(prefix=prefix, year=year, count=1)
    return number


# --- building lines ------------------------------------------------------------------


def _tiers_data(tiers: tuple[pricing.TierCharge, ...]) -> list[dict[str, Any]]:
    return [
        {
            "tier": t.tier_index,
            "quantity": decimal_text(t.quantity),
            "unit_price": decimal_text(t.unit_price),
            "flat_fee": decimal_text(t.flat_fee),
            "amount": decimal_text(t.amount),
        }
        for t in tiers
    ]


def _rated_lines(rating: PeriodRating, watermark: int = 0) -> list[InvoiceLine]:
    lines = []
    for segment in rating.segments:
        for rated in segment.rated.lines:
            lines.append(
                InvoiceLine(
                    kind=rated.kind,
                    description=rated.description,
                    plan_version_id=segment.plan_version_id,
                    segment_start=segment.start,
                    segment_end=segment.end,
                    component_key=rated.component_key or "",
                    token_class=rated.token_class or "",
                    aliases=list(rated.aliases),
                    tokens=rated.tokens,
                    reasoning_tokens=rated.reasoning_tokens,
                    allowance_tokens=rated.allowance_tokens,
                    billable_tokens=rated.billable_tokens,
                    quantity=rated.quantity,
                    tiers=_tiers_data(rated.tiers),
                    amount_exact=rated.amount_exact,
                    amount_minor=rated.amount_minor,
                    usage_cutoff_record_id=rating.cutoff_record_id,
                    usage_watermark=watermark,
                )
            )
    return lines


def billed_for_period(*, tenant_id: uuid.UUID, period_start: datetime) -> int:
    """Minor units billed so far for a period: its own invoice's lines plus adjustment
    lines on later invoices (void invoices excluded). Credits applied are payment, not
    billing: they do not count."""
    live = ~Q(invoice__status=Status.VOID) & ~Q(invoice__status=Status.DRAFT)
    own = Q(invoice__period_start=period_start) & ~Q(kind__in=[Kind.ADJUSTMENT, Kind.CREDIT])
    later = Q(kind=Kind.ADJUSTMENT, adjusts_period_start=period_start)
    total = InvoiceLine.objects.filter(live, own | later, invoice__tenant_id=tenant_id).aggregate(
        total=Sum("amount_minor")
    )["total"]
    return total or 0


def late_usage_adjustments(
    *, tenant_ids: list[uuid.UUID], before: Period, watermark: int | None = None
) -> dict[uuid.UUID, list[InvoiceLine]]:
    """Bill usage that reached the tenants' last finalized periods after they were
    invoiced. One query finds the periods whose rollups changed at or past the commit
    watermark of their last rating; only those are re-rated, and a difference (what the
    period rates to now minus everything billed for it) becomes an adjustment line naming
    the period. Billed exactly once: a change below the watermark was in that rating, one
    at or above it is found here, and re-rating a period already billed in full adds
    nothing. `watermark` must be taken before any rollup read of the caller's transaction
    (`usage_watermark`)."""
    watermark = usage_watermark() if watermark is None else watermark
    lookback = settings.RECKON_LATE_USAGE_LOOKBACK_PERIODS
    earlier: dict[uuid.UUID, list[Invoice]] = {}
    for invoice in (
        Invoice.objects.filter(tenant_id__in=tenant_ids, period_start__lt=before.start)
        .exclude(status__in=[Status.VOID, Status.DRAFT])
        .order_by("tenant_id", "-period_start")
    ):
        kept = earlier.setdefault(invoice.tenant_id, [])
        if len(kept) < lookback:
            kept.append(invoice)
    candidates = [i for kept in earlier.values() for i in kept]
    adjusted_up_to = {
        (row["invoice__tenant_id"], row["adjusts_period_start"]): (row["last"], row["watermark"])
        for row in InvoiceLine.objects.filter(
            kind=Kind.ADJUSTMENT,
            invoice__tenant_id__in=list(earlier),
            adjusts_period_start__in={i.period_start for i in candidates},
        )
        .exclude(invoice__status__in=[Status.VOID, Status.DRAFT])
        .values("invoice__tenant_id", "adjusts_period_start")
        .annotate(last=Max("usage_cutoff_record_id"), watermark=Max("usage_watermark"))
        .order_by()
    }
    late = windows_with_usage_after(
        [
            BilledWindow(
                i.tenant_id,
                i.period_start,
                i.period_end,
                max(
                    i.usage_cutoff_record_id,
                    adjusted_up_to.get((i.tenant_id, i.period_start), NONE)[0],
                ),
                max(i.usage_watermark, adjusted_up_to.get((i.tenant_id, i.period_start), NONE)[1]),
            )
            for i in candidates
        ]
    )
    lines: dict[uuid.UUID, list[InvoiceLine]] = {}
    for invoice in candidates:
        if (invoice.tenant_id, invoice.period_start) not in late:
            continue
        period = Period(invoice.period_start, invoice.period_end)
        rating = period_rate(tenant_id=invoice.tenant_id, period=period)
        delta = rating.total_minor - billed_for_period(
            tenant_id=invoice.tenant_id, period_start=invoice.period_start
        )
        if delta == 0:
            continue
        lines.setdefault(invoice.tenant_id, []).append(
            InvoiceLine(
                kind=Kind.ADJUSTMENT,
                description=(
                    f"Usage recorded after {invoice.number} was issued, for period "
                    f"{period.start:%Y-%m-%d} to {period.end:%Y-%m-%d}"
                ),
                plan_version_id=rating.segments[-1].plan_version_id,
                segment_start=period.start,
                segment_end=period.end,
                adjusts_period_start=period.start,
                amount_exact=from_minor(delta, invoice.currency),
                amount_minor=delta,
                usage_cutoff_record_id=rating.cutoff_record_id,
                usage_watermark=watermark,
            )
        )
    return lines


# --- period close --------------------------------------------------------------------


def period_close(
    *,
    tenant_id: uuid.UUID,
    period_start: datetime,
    as_of: datetime | None = None,
    enforce_grace: bool = True,
) -> Invoice:
    """Build and finalize one tenant's invoice for a period (see `periods_close`)."""
    (invoice,) = periods_close(
        tenant_ids=[tenant_id], period_start=period_start, as_of=as_of, enforce_grace=enforce_grace
    )
    return invoice


@transaction.atomic
def periods_close(
    *,
    tenant_ids: Sequence[uuid.UUID | str],
    period_start: datetime,
    as_of: datetime | None = None,
    enforce_grace: bool = True,
) -> list[Invoice]:
    """Build and finalize the invoices of many tenants for the period starting at
    `period_start`, in ONE transaction, with set-based queries (returned in tenant order).

    Safe to run twice: a tenant whose period already has a finalized invoice gets that
    invoice back, untouched. A crash anywhere leaves nothing behind, and the numbers
    taken are given back, so a re-run issues the same numbers. An operator may close an
    ended period before its grace period is over (`enforce_grace=False`); a period that
    has not ended is never closed."""
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
    live = {
        t: next((i for i in invoices if i.status != Status.VOID), None)
        for t, invoices in same_period.items()
    }
    done = {t: i for t, i in live.items() if i is not None and i.is_final}
    todo = [t for t in ids if t not in done]
    if not todo:
        return [done[t] for t in ids]
    # Usage spooled by a writer while the database was away belongs on these invoices:
    # refuse to close (the task retries) until every writer reports its spool loaded.
    spool_guard(spool_dir=settings.RECKON_LEDGER_SPOOL_DIR, redis_url=settings.REDIS_URL)

    subscriptions: dict[uuid.UUID, list[Subscription]] = {}
    for s in (
        Subscription.objects.filter(
            tenant_id__in=todo, starts_at__lt=period_start + timedelta(days=32)
        )
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=period_start))
        .select_related("plan_version__plan")
        .order_by("starts_at")
    ):
        subscriptions.setdefault(s.tenant_id, []).append(s)
    missing = [t for t in todo if t not in subscriptions]
    if missing:
        raise NotFound(f"No subscription at {period_start:%Y-%m-%d} for tenant(s) {missing}.")
    period = period_containing(subscriptions[todo[0]][0].anchor_day, period_start)
    for t in todo:
        if period_containing(subscriptions[t][0].anchor_day, period_start) != period:
            raise ApplicationError(f"{period_start:%Y-%m-%d %H:%M} is not a period start for {t}.")
    grace = timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS if enforce_grace else 0)
    if period.end + grace > as_of:
        raise NotDue(f"Period {period.label} closes after its grace period ({grace}).")

    # Taken before any rollup is read: what committed below it is in these ratings; what
    # commits at or above it is found as late usage at the next close.
    watermark = usage_watermark()
    # Tenants on one plan for the whole period are rated from one bulk usage query.
    usage = usage_totals(by="tenant", tenant_ids=todo, start=period.start, end=period.end)
    adjustments = late_usage_adjustments(tenant_ids=todo, before=period, watermark=watermark)
    ratings: dict[uuid.UUID, PeriodRating] = {}
    for t in todo:
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
    lines = {t: _rated_lines(ratings[t], watermark) + adjustments.get(t, []) for t in todo}
    credits = credits_for_invoices(
        lines=lines, currencies={t: ratings[t].currency for t in todo}, period=period
    )
    checkpoint("after_lines")

    issue_date = as_of.date()
    numbers = next_numbers(
        prefix=settings.RECKON_INVOICE_PREFIX, year=issue_date.year, count=len(todo)
    )
    created: list[Invoice] = []
    for t, number in zip(todo, numbers, strict=True):
        subtotal = sum(line.amount_minor for line in lines[t])
        fields = {
            "period_end": period.end,
            "currency": ratings[t].currency,
            "status": Status.FINALIZED,
            "number": number,
            "subtotal_minor": subtotal,
            "tax_minor": 0,
            "total_minor": subtotal,
            "issue_date": issue_date,
            "due_date": issue_date + timedelta(days=settings.RECKON_INVOICE_NET_DAYS),
            "usage_cutoff_record_id": ratings[t].cutoff_record_id,
            "usage_watermark": watermark,
            "finalized_at": as_of,
        }
        draft = live.get(t)
        if draft is not None:  # a draft left behind by an earlier version: finish it
            draft.lines.all().delete()
            for name, value in fields.items():
                setattr(draft, name, value)
            draft.save()
            done[t] = draft
            continue
        earlier = same_period.get(t, [])
        replaced = {i.replaces_id for i in earlier}
        voided = [i for i in earlier if i.status == Status.VOID and i.pk not in replaced]
        invoice = Invoice(
            tenant_id=t,
            period_start=period.start,
            replaces=voided[-1] if voided else None,
            **fields,
        )
        created.append(invoice)
        done[t] = invoice
    Invoice.objects.bulk_create(created)
    all_lines = []
    for t in todo:
        for position, line in enumerate(lines[t]):
            line.invoice = done[t]
            line.position = position
            all_lines.append(line)
    InvoiceLine.objects.bulk_create(all_lines)
    credits_consume(applied=credits, invoices=done)
    checkpoint("after_finalize")
    for t in todo:
        _after_commit_sync(done[t])
    return [done[t] for t in ids]


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


def _after_commit_sync(invoice: Invoice) -> None:
    if settings.STRIPE_API_KEY:
        from billing import tasks

        invoice_id = invoice.pk
        transaction.on_commit(lambda: tasks.sync_invoice_to_stripe.delay(invoice_id))


@dataclass(frozen=True)
class DuePeriod:
    tenant_id: uuid.UUID
    period_start: datetime


def periods_due(*, as_of: datetime) -> list[DuePeriod]:
    """Every (tenant, period) that ended at least the grace period before `as_of`,
    overlaps a subscription, and has no live invoice."""
    from billing.models import Subscription

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


# --- transitions ---------------------------------------------------------------------

_ALLOWED = {
    Status.FINALIZED: {Status.PAID, Status.VOID, Status.UNCOLLECTIBLE},
    Status.UNCOLLECTIBLE: {Status.PAID, Status.VOID},
}


@transaction.atomic
def invoice_transition(*, invoice: Invoice, to: str, at: datetime | None = None) -> Invoice:
    """Move a finalized invoice along its lifecycle. Idempotent; never moves backwards
    (so events that arrive out of order cannot undo a terminal state)."""
    at = at or timezone.now()
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status == to:
        return invoice
    if to not in _ALLOWED.get(Status(invoice.status), set()):
        raise Conflict(f"Invoice {invoice} is {invoice.status}; it cannot become {to}.")
    if to == Status.VOID:
        adjusting = (
            InvoiceLine.objects.filter(
                kind=Kind.ADJUSTMENT,
                adjusts_period_start=invoice.period_start,
                invoice__tenant_id=invoice.tenant_id,
            )
            .exclude(invoice__status__in=[Status.VOID, Status.DRAFT])
            .values_list("invoice__number", flat=True)
        )
        later = sorted({n for n in adjusting if n})
        if later:
            raise Conflict(
                f"Later invoices ({', '.join(later)}) bill adjustments for this "
                "period; re-issuing it would bill that usage twice. Issue a credit note instead."
            )
    invoice.status = to
    if to == Status.PAID:
        invoice.paid_at = at
    elif to == Status.VOID:
        invoice.voided_at = at
    invoice.save(update_fields=["status", "paid_at", "voided_at"])
    if to == Status.VOID:
        credits_restore(invoice=invoice)  # the re-issued invoice draws on them again
    if to == Status.VOID and invoice.stripe_invoice_id and settings.STRIPE_API_KEY:
        from billing import tasks

        invoice_id = invoice.pk
        transaction.on_commit(lambda: tasks.void_invoice_in_stripe.delay(invoice_id))
    return invoice


@transaction.atomic
def invoice_record_payment_failure(*, invoice: Invoice, at: datetime) -> Invoice:
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.payment_failed_at is None or invoice.payment_failed_at < at:
        invoice.payment_failed_at = at
        invoice.save(update_fields=["payment_failed_at"])
    return invoice


@transaction.atomic
def credit_note_issue(
    *, invoice: Invoice, reason: str, amount_minor: int | None = None
) -> CreditNote:
    """Credit all (amount None) or part of a finalized invoice, never more than is left."""
    invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if invoice.status in (Status.DRAFT, Status.VOID):
        raise Conflict("Only a finalized, unvoided invoice can be credited.")
    credited = invoice.credit_notes.aggregate(total=Sum("amount_minor"))["total"] or 0
    remaining = invoice.total_minor - credited
    amount = remaining if amount_minor is None else amount_minor
    if amount <= 0 or amount > remaining:
        raise ApplicationError(
            f"A credit must be between 1 and {remaining} minor units for this invoice."
        )
    if not reason.strip():
        raise ApplicationError("A credit note needs a reason.")
    number = next_number(prefix=settings.RECKON_CREDIT_NOTE_PREFIX, year=timezone.now().year)
    return CreditNote.objects.create(
        invoice=invoice, number=number, amount_minor=amount, reason=reason
    )


# --- reproducibility -----------------------------------------------------------------


@dataclass(frozen=True)
class LineDifference:
    position: int | None
    field: str
    invoiced: Any
    recomputed: Any


def invoice_recompute(*, invoice: Invoice) -> list[LineDifference]:
    """Recompute every line from the raw usage ledger (not rollups) up to the invoice's
    cut-off, through the same rating as the close, and list the differences (none =
    reproducible). Plan versions never change and plan changes cannot reach into an
    invoiced period, so the segments are the ones the invoice was built from."""
    cutoff = invoice.usage_cutoff_record_id

    def raw(tenant_id: uuid.UUID, start: datetime, end: datetime) -> UsageTotals:
        return usage_totals(
            by="alias", tenant_id=tenant_id, start=start, end=end, up_to_record_id=cutoff
        )

    rating = period_rate(
        tenant_id=invoice.tenant_id,
        period=Period(invoice.period_start, invoice.period_end),
        usage_source=raw,
    )
    fresh = _rated_lines(rating)
    own = [
        line
        for line in invoice.lines.order_by("position")
        if line.kind not in (Kind.ADJUSTMENT, Kind.CREDIT)
    ]
    differences: list[LineDifference] = []
    if len(own) != len(fresh):
        differences.append(LineDifference(None, "line_count", len(own), len(fresh)))
    for line, again in zip(own, fresh, strict=False):
        for name in ("kind", "plan_version_id", "tokens", "amount_exact", "amount_minor"):
            invoiced, recomputed = getattr(line, name), getattr(again, name)
            if name == "amount_exact":  # stored with 12 decimals; a prorated third has more
                if abs(Decimal(invoiced) - Decimal(recomputed)) <= STORED_PRECISION:
                    continue
            if invoiced != recomputed:
                differences.append(LineDifference(line.position, name, invoiced, recomputed))
    for line in invoice.lines.filter(kind=Kind.ADJUSTMENT).order_by("position"):
        differences += _recompute_adjustment(invoice, line)
    differences += _recompute_credit(invoice)
    total = sum(line.amount_minor for line in invoice.lines.all())
    if total != invoice.total_minor:
        differences.append(LineDifference(None, "total_minor", invoice.total_minor, total))
    return differences


def _recompute_credit(invoice: Invoice) -> list[LineDifference]:
    """The credit line equals what the balance ledger says the invoice consumed."""
    line = invoice.lines.filter(kind=Kind.CREDIT).first()
    consumed = invoice.balance_entries.filter(kind="consumption").aggregate(total=Sum("amount"))[
        "total"
    ] or Decimal(0)
    shown = line.amount_exact if line else Decimal(0)
    if shown != consumed:
        return [LineDifference(line.position if line else None, "credit_applied", shown, consumed)]
    return []


def _recompute_adjustment(invoice: Invoice, line: InvoiceLine) -> list[LineDifference]:
    """An adjustment is right when everything billed for its period up to this invoice
    equals the period re-rated from raw records at the adjustment's cut-off."""
    assert line.adjusts_period_start is not None
    adjusted = (
        Invoice.objects.filter(tenant_id=invoice.tenant_id, period_start=line.adjusts_period_start)
        .exclude(status__in=[Status.VOID, Status.DRAFT])
        .first()
    )
    if adjusted is None:
        return [LineDifference(line.position, "adjusted_invoice", "present", None)]
    cutoff = line.usage_cutoff_record_id

    def raw(tenant_id: uuid.UUID, start: datetime, end: datetime) -> UsageTotals:
        return usage_totals(
            by="alias", tenant_id=tenant_id, start=start, end=end, up_to_record_id=cutoff
        )

    expected = period_rate(
        tenant_id=invoice.tenant_id,
        period=Period(adjusted.period_start, adjusted.period_end),
        usage_source=raw,
    ).total_minor
    billed = (
        InvoiceLine.objects.filter(
            Q(invoice=adjusted) & ~Q(kind__in=[Kind.ADJUSTMENT, Kind.CREDIT])
            | Q(
                kind=Kind.ADJUSTMENT,
                adjusts_period_start=line.adjusts_period_start,
                invoice__finalized_at__lte=invoice.finalized_at,
            ),
            invoice__tenant_id=invoice.tenant_id,
        )
        .exclude(invoice__status=Status.VOID)
        .aggregate(total=Sum("amount_minor"))["total"]
        or 0
    )
    if billed != expected:
        return [LineDifference(line.position, "adjusted_period_total", billed, expected)]
    return []
