"""Late usage: usage that reached an already-invoiced period is billed on the next invoice
as an adjustment line naming that period, exactly once.

Late usage is found by a commit watermark, not by record id (ids are assigned at INSERT
and commit out of order across writers): every invoice and line keeps the
`usage_watermark` taken before its rollups were read; a rollup changed by a transaction at
or above it may be missing from it and its period is re-rated at the next close; every
change below it was included. The adjustment is the re-rated total minus everything
billed for the period.
"""

import uuid
from datetime import datetime

from django.conf import settings
from django.db.models import Max, Q, Sum

from billing.models import Invoice, InvoiceLine
from billing.period_rating import period_rate
from billing.pricing.currency import from_minor
from billing.pricing.periods import Period
from metering.selectors import BilledWindow, usage_watermark, windows_with_usage_after

Status = Invoice.Status
Kind = InvoiceLine.Kind
NONE = (0, 0)  # (record cut-off, watermark) of a period no adjustment billed yet


def billed_for_period(*, tenant_id: uuid.UUID, period_start: datetime) -> int:
    """Minor units billed so far for a period: its own invoice's lines plus adjustment
    lines on later invoices (void invoices excluded). Credits applied are payment, not
    billing: they do not count."""
    live = ~Q(invoice__status=Status.VOID)
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
        .exclude(status=Status.VOID)
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
        .exclude(invoice__status=Status.VOID)
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
