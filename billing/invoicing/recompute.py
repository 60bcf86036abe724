"""Reproducibility: every line of an issued invoice recomputed from the raw usage ledger
(not the rollups) up to the invoice's cut-off, through the same rating as the close."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum

from billing.invoicing.lines import invoice_lines_from_rating
from billing.models import Invoice, InvoiceLine
from billing.period_rating import UsageSource, period_rate
from billing.pricing.periods import Period
from metering.selectors import UsageTotals, usage_totals

Status = Invoice.Status
Kind = InvoiceLine.Kind
STORED_PRECISION = Decimal("1e-12")  # InvoiceLine.amount_exact keeps 12 decimals


def _raw_records_up_to(cutoff: int) -> UsageSource:
    """A usage source reading raw ledger records with ids up to `cutoff` (not rollups)."""

    def raw(tenant_id: uuid.UUID, start: datetime, end: datetime) -> UsageTotals:
        return usage_totals(tenant_id=tenant_id, start=start, end=end, up_to_record_id=cutoff)

    return raw


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
    rating = period_rate(
        tenant_id=invoice.tenant_id,
        period=Period(invoice.period_start, invoice.period_end),
        usage_source=_raw_records_up_to(invoice.usage_cutoff_record_id),
    )
    fresh = invoice_lines_from_rating(rating)
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
        .exclude(status=Status.VOID)
        .first()
    )
    if adjusted is None:
        return [LineDifference(line.position, "adjusted_invoice", "present", None)]
    expected = period_rate(
        tenant_id=invoice.tenant_id,
        period=Period(adjusted.period_start, adjusted.period_end),
        usage_source=_raw_records_up_to(line.usage_cutoff_record_id),
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
