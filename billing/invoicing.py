"""Invoices: period close, finalization with gapless numbers, late-usage adjustments,
status transitions, credit notes, and recomputation from the raw ledger.

Invariants:
- one live (non-void) invoice per (tenant, period): a database constraint;
- `period_close` builds the invoice and finalizes it in ONE transaction: a crash anywhere
  inside leaves nothing behind, and running it again gives the same invoice, number and
  totals; running it after success returns the existing invoice unchanged;
- a finalized invoice never changes; later usage for its period is billed on a later
  invoice as an adjustment line naming the period; money corrections are credit notes;
- every line's amount can be recomputed from the raw ledger (`invoice_recompute`).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing import pricing
from billing.currency import decimal_text, from_minor
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    PlanVersion,
    Subscription,
)
from billing.periods import Period, period_containing
from billing.proration import prorate_plan
from billing.selectors import plan_version_pricing, subscriptions_in_period
from billing.services import PeriodRating, period_rate
from metering.errors import ApplicationError, Conflict, NotFound
from metering.models import Tenant
from metering.selectors import UsageTotals, usage_recorded_after, usage_totals_from_records

Status = Invoice.Status
Kind = InvoiceLine.Kind


class NotDue(ApplicationError):
    code = "period_not_due"


class InjectedFault(RuntimeError):
    """Raised at a named checkpoint when a test asks for a crash there."""


def checkpoint(name: str) -> None:
    if name in settings.RECKON_FAULT_POINTS:
        raise InjectedFault(f"injected fault at {name}")


# --- numbering -----------------------------------------------------------------------


def next_number(*, prefix: str, year: int) -> str:
    """Take the next gapless number in one statement. It must run inside the transaction
    that uses the number: the row stays locked until that transaction ends, and a
    rollback gives the number back."""
    assert connection.in_atomic_block, "numbers are taken inside the finalizing transaction"
    table = InvoiceSequence._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (prefix, year, last_number) VALUES (%s, %s, 1)"  # noqa: S608
            f" ON CONFLICT (prefix, year) DO UPDATE SET last_number = {table}.last_number + 1"
            " RETURNING last_number",
            [prefix, year],
        )
        (number,) = cursor.fetchone()
    return f"{prefix}-{year}-{number:06d}"


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


def _rated_lines(rating: PeriodRating) -> list[InvoiceLine]:
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
                )
            )
    return lines


def billed_for_period(*, tenant_id: uuid.UUID, period_start: datetime) -> int:
    """Minor units billed so far for a period: its own invoice's lines plus adjustment
    lines on later invoices (void invoices excluded)."""
    live = ~Q(invoice__status=Status.VOID) & ~Q(invoice__status=Status.DRAFT)
    own = Q(invoice__period_start=period_start) & ~Q(kind=Kind.ADJUSTMENT)
    later = Q(kind=Kind.ADJUSTMENT, adjusts_period_start=period_start)
    total = InvoiceLine.objects.filter(live, own | later, invoice__tenant_id=tenant_id).aggregate(
        total=Sum("amount_minor")
    )["total"]
    return total or 0


def late_usage_adjustments(*, tenant_id: uuid.UUID, before: Period) -> list[InvoiceLine]:
    """Bill usage that reached the last finalized periods after they were invoiced: a
    period is re-rated from today's rollups only when rollups show records past what was
    billed for it, and any difference becomes an adjustment line naming the period."""
    earlier = list(
        Invoice.objects.filter(tenant_id=tenant_id, period_start__lt=before.start)
        .exclude(status__in=[Status.VOID, Status.DRAFT])
        .order_by("-period_start")[: settings.RECKON_LATE_USAGE_LOOKBACK_PERIODS]
    )
    lines = []
    for invoice in earlier:
        period = Period(invoice.period_start, invoice.period_end)
        billed_up_to = max(
            [invoice.usage_cutoff_record_id]
            + list(
                InvoiceLine.objects.filter(
                    kind=Kind.ADJUSTMENT,
                    adjusts_period_start=period.start,
                    invoice__tenant_id=tenant_id,
                )
                .exclude(invoice__status=Status.VOID)
                .values_list("usage_cutoff_record_id", flat=True)
            )
        )
        if not usage_recorded_after(
            tenant_id=tenant_id, start=period.start, end=period.end, record_id=billed_up_to
        ):
            continue
        rating = period_rate(tenant_id=tenant_id, period=period)
        delta = rating.total_minor - billed_for_period(
            tenant_id=tenant_id, period_start=invoice.period_start
        )
        if delta == 0:
            continue
        segment = rating.segments[-1]
        lines.append(
            InvoiceLine(
                kind=Kind.ADJUSTMENT,
                description=(
                    f"Usage recorded after {invoice.number} was issued, for period "
                    f"{period.start:%Y-%m-%d} to {period.end:%Y-%m-%d}"
                ),
                plan_version_id=segment.plan_version_id,
                segment_start=period.start,
                segment_end=period.end,
                adjusts_period_start=period.start,
                amount_exact=from_minor(delta, invoice.currency),
                amount_minor=delta,
                usage_cutoff_record_id=rating.cutoff_record_id,
            )
        )
    return lines


# --- period close --------------------------------------------------------------------


def period_for(
    *, tenant_id: uuid.UUID, period_start: datetime
) -> tuple[Period, list[Subscription]]:
    """The billing period starting at `period_start`, with the subscriptions covering it."""
    window = Period(period_start, period_start + timedelta(days=32))
    subs = subscriptions_in_period(tenant_id=tenant_id, period=window)
    if not subs:
        raise NotFound("The tenant has no subscription at that period start.")
    period = period_containing(subs[0].anchor_day, period_start)
    if period.start != period_start:
        raise ApplicationError(f"{period_start:%Y-%m-%d %H:%M} is not a period start.")
    return period, [s for s in subs if s.starts_at < period.end]


@transaction.atomic
def period_close(
    *,
    tenant_id: uuid.UUID,
    period_start: datetime,
    as_of: datetime | None = None,
    enforce_grace: bool = True,
) -> Invoice:
    """Build and finalize the invoice of one tenant's period. Safe to run twice.

    An operator may close an ended period before its grace period is over
    (`enforce_grace=False`); a period that has not ended is never closed."""
    as_of = as_of or timezone.now()
    # One close (or plan change) per tenant at a time; the live-invoice constraint backs it.
    Tenant.objects.select_for_update().filter(pk=tenant_id).values_list("pk").get()
    same_period = list(Invoice.objects.filter(tenant_id=tenant_id, period_start=period_start))
    live = next((i for i in same_period if i.status != Status.VOID), None)
    if live is not None and live.is_final:
        return live
    period, subs = period_for(tenant_id=tenant_id, period_start=period_start)
    grace = timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS if enforce_grace else 0)
    if period.end + grace > as_of:
        raise NotDue(f"Period {period.label} closes after its grace period ({grace}).")
    rating = period_rate(tenant_id=tenant_id, period=period, subscriptions=subs)
    lines = _rated_lines(rating) + late_usage_adjustments(tenant_id=tenant_id, before=period)
    checkpoint("after_lines")
    subtotal = sum(line.amount_minor for line in lines)
    issue_date = as_of.date()
    fields = {
        "period_end": period.end,
        "currency": rating.currency,
        "status": Status.FINALIZED,
        "number": next_number(prefix=settings.RECKON_INVOICE_PREFIX, year=issue_date.year),
        "subtotal_minor": subtotal,
        "tax_minor": 0,
        "total_minor": subtotal,
        "issue_date": issue_date,
        "due_date": issue_date + timedelta(days=settings.RECKON_INVOICE_NET_DAYS),
        "usage_cutoff_record_id": rating.cutoff_record_id,
        "finalized_at": as_of,
    }
    if live is not None:  # a draft left behind by an earlier version: finish it
        live.lines.all().delete()
        for name, value in fields.items():
            setattr(live, name, value)
        live.save()
        invoice = live
    else:
        replaced = {i.replaces_id for i in same_period}
        voided = [i for i in same_period if i.status == Status.VOID and i.pk not in replaced]
        invoice = Invoice.objects.create(
            tenant_id=tenant_id,
            period_start=period.start,
            replaces=voided[-1] if voided else None,
            **fields,
        )
    for position, line in enumerate(lines):
        line.invoice = invoice
        line.position = position
    InvoiceLine.objects.bulk_create(lines)
    checkpoint("after_finalize")
    _after_commit_sync(invoice)
    return invoice


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
    if to not in _ALLOWED.get(invoice.status, set()):
        raise Conflict(f"Invoice {invoice} is {invoice.status}; it cannot become {to}.")
    invoice.status = to
    if to == Status.PAID:
        invoice.paid_at = at
    elif to == Status.VOID:
        invoice.voided_at = at
    invoice.save(update_fields=["status", "paid_at", "voided_at"])
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
    cut-off, with each line's plan version, and list the differences (none = reproducible)."""
    period = Period(invoice.period_start, invoice.period_end)
    own = [line for line in invoice.lines.order_by("position") if line.kind != Kind.ADJUSTMENT]
    differences: list[LineDifference] = []
    segments: dict[tuple[datetime, datetime, int], list[InvoiceLine]] = {}
    for line in own:
        segments.setdefault(
            (line.segment_start, line.segment_end, line.plan_version_id), []
        ).append(line)
    for (start, end, version_id), lines in segments.items():
        share = Decimal(int((end - start).total_seconds())) / Decimal(period.seconds())
        plan = prorate_plan(plan_version_pricing(PlanVersion.objects.get(pk=version_id)), share)
        usage = usage_totals_from_records(
            tenant_id=invoice.tenant_id,
            start=start,
            end=end,
            max_record_id=invoice.usage_cutoff_record_id,
        )
        rated = pricing.rate(plan, pricing.UsageVector(usage.tokens)).lines
        if len(rated) != len(lines):
            differences.append(LineDifference(None, "line_count", len(lines), len(rated)))
            continue
        for line, fresh in zip(lines, rated, strict=True):
            for field, invoiced, recomputed in (
                ("kind", line.kind, fresh.kind),
                ("tokens", line.tokens, fresh.tokens),
                ("amount_exact", Decimal(line.amount_exact), fresh.amount_exact),
                ("amount_minor", line.amount_minor, fresh.amount_minor),
            ):
                if invoiced != recomputed:
                    differences.append(LineDifference(line.position, field, invoiced, recomputed))
    for line in invoice.lines.filter(kind=Kind.ADJUSTMENT).order_by("position"):
        differences += _recompute_adjustment(invoice, line)
    total = sum(line.amount_minor for line in invoice.lines.all())
    if total != invoice.total_minor:
        differences.append(LineDifference(None, "total_minor", invoice.total_minor, total))
    return differences


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
        return usage_totals_from_records(
            tenant_id=tenant_id, start=start, end=end, max_record_id=cutoff
        )

    expected = period_rate(
        tenant_id=invoice.tenant_id,
        period=Period(adjusted.period_start, adjusted.period_end),
        usage_source=raw,
    ).total_minor
    billed = (
        InvoiceLine.objects.filter(
            Q(invoice=adjusted) & ~Q(kind=Kind.ADJUSTMENT)
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
