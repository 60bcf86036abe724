"""Invoice lines: built from a period's rating, and the one list of the fields a line
shows (the REST API's line output and the CSV export both use ``INVOICE_LINE_FIELDS``)."""

from typing import Any

from billing.models import InvoiceLine
from billing.period_rating import PeriodRating
from billing.pricing.charges import TierCharge
from billing.pricing.currency import decimal_text

# What an invoice line shows, in order (the API adds "tiers"; CSV names the plan version
# by id and the invoice by number).
INVOICE_LINE_FIELDS = [
    "position",
    "kind",
    "description",
    "plan_version",
    "segment_start",
    "segment_end",
    "adjusts_period_start",
    "component_key",
    "token_class",
    "aliases",
    "tokens",
    "reasoning_tokens",
    "allowance_tokens",
    "billable_tokens",
    "quantity",
    "tiers",
    "amount_exact",
    "amount_minor",
    "usage_cutoff_record_id",
]


def tier_charges_data(tiers: tuple[TierCharge, ...]) -> list[dict[str, Any]]:
    """A rated line's tier charges as stored on the invoice line (and shown by the API):
    exact decimals as strings."""
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


def invoice_lines_from_rating(rating: PeriodRating, watermark: int = 0) -> list[InvoiceLine]:
    """Unsaved lines for every rated line of every segment, in order; `watermark` is the
    commit watermark the rating read under (0 when recomputing from raw records)."""
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
                    tiers=tier_charges_data(rated.tiers),
                    amount_exact=rated.amount_exact,
                    amount_minor=rated.amount_minor,
                    usage_cutoff_record_id=rating.cutoff_record_id,
                    usage_watermark=watermark,
                )
            )
    return lines
