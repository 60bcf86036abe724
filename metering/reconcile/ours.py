"""Our side of reconciliation: what the ledger says it forwarded on a provider account.

Read from the hourly rollups only (`UsageRollup`), never from raw records, in one
grouped query: through `config.db_router.reporting_reads()` (a replica when configured,
so it may lag the primary by its replay lag) for the API and the margin report; on the
primary with `primary=True` (reconciliation's write path, whose rows and alerts must not
see a lagging ledger). Invariants:
- a row is one (UTC day, upstream model, tenant, alias, accelerator) of the account's
  rollups in
  [start, end) UTC days: the rollups whose provider account stamp is the account's (the
  route's account when each record was served, `UsageRecord.provider_account`), so a
  route moved to another account mid-day counts on each account for its own hours;
- `records` are every record (flagged or not, answered or not): requests +
  flagged_requests; `requests` are answered requests: every record (flagged or not) minus those the
  upstream did not answer (status upstream_error or failed: `unanswered_requests`);
- token classes are plain + flagged: what was forwarded counts whether or not it is held
  back from rating. They are the ledger's disjoint classes: `input_tokens` is uncached
  input, `output_tokens` visible output; the provider-side mapping is reconciliation's;
- `serving_cost_usd` is the rated (plain) records' stamped serving cost, exact on
  PostgreSQL (SQLite sums decimals as floats: its last digits may differ);
- hours of months archived and dropped before the account stamp existed carry account 0
  and never show here.
"""

import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal

from django.db.models import DateTimeField, F, Sum
from django.db.models.functions import Trunc

from config.db_router import reporting_reads
from metering.models import UsageRollup


@dataclass(frozen=True)
class ForwardedRow:
    day: date  # UTC day of the records' started_at hour
    upstream_model: str
    tenant_id: uuid.UUID
    alias: str
    accelerator: str  # the accelerator type that served them ('' when none was recorded)
    records: int  # every record, flagged or not, answered or not
    requests: int  # answered: requests + flagged_requests - unanswered_requests
    input_tokens: int  # uncached input, plain + flagged
    cached_input_tokens: int  # cache read, plain + flagged
    cache_write_tokens: int  # plain + flagged
    output_tokens: int  # visible output, plain + flagged
    reasoning_tokens: int  # plain + flagged
    serving_cost_usd: Decimal  # list-price/hardware estimate as stamped (plain rows)


# Token classes summed plain + flagged (`UsageRollup.flagged_<name>`).
_TOKENS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def forwarded_usage(
    *, account_id: int, start: date, end: date, primary: bool = False
) -> list[ForwardedRow]:
    """What the ledger forwarded on provider account `account_id` per UTC day, upstream
    model, tenant, alias and accelerator in the days [start, end), sorted by those five.
    A reporting read (the replica when configured) unless `primary`."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if account_id <= 0 or start == end:
        return []
    sums = {
        "records": Sum(F("requests") + F("flagged_requests")),
        "all_requests": Sum(F("requests") + F("flagged_requests") - F("unanswered_requests")),
        **{name: Sum(F(name) + F(f"flagged_{name}")) for name in _TOKENS},
        "cost": Sum("serving_cost_usd"),
    }
    scope: AbstractContextManager[None] = nullcontext() if primary else reporting_reads()
    with scope:
        rows = list(
            UsageRollup.objects.filter(
                provider_account_id=account_id,
                hour__gte=_midnight(start),
                hour__lt=_midnight(end),
            )
            .annotate(day=Trunc("hour", "day", output_field=DateTimeField(), tzinfo=UTC))
            .values("day", "upstream_model", "tenant_id", "alias", "accelerator")
            .annotate(**sums)
            .order_by()
        )
    found = [
        ForwardedRow(
            day=row["day"].astimezone(UTC).date(),
            upstream_model=row["upstream_model"],
            tenant_id=row["tenant_id"],
            alias=row["alias"],
            accelerator=row["accelerator"],
            records=int(row["records"] or 0),
            requests=int(row["all_requests"] or 0),
            **{name: int(row[name] or 0) for name in _TOKENS},
            serving_cost_usd=Decimal(row["cost"] or 0),
        )
        for row in rows
    ]
    return sorted(
        found, key=lambda r: (r.day, r.upstream_model, r.tenant_id, r.alias, r.accelerator)
    )
