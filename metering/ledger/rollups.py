"""Rollup folding: how usage records add up into hourly rollups (`UsageRollup`).

The one home of the folding rule, used by both write paths (`postgres` folds inside its
batch statement, `orm` after its bulk insert):
- a record counts in the rollup of (tenant, alias, accelerator, UTC hour it started in);
- only records without flags are summed (`requests` and the `ROLLUP_SUMS` columns); a
  flagged record adds to `flagged_requests` only (rating holds it back);
- `last_record_id` is the highest record id folded in, flagged or not;
- `changed_xid` is the commit-order stamp billing compares with a watermark to find late
  usage (`metering.selectors.usage_watermark`): on PostgreSQL the writing transaction's id,
  elsewhere (one writer at a time, ids commit in order) the highest record id.
Only records actually inserted are folded, so a replayed batch adds nothing.
"""

from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import BigIntegerField, F, Func
from django.db.models.functions import Greatest

from metering.models import UsageRecord, UsageRollup

ROLLUP_SUMS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "serving_cost_usd",
    "reasoning_cost_usd",
    "spend_usd",
)


# The commit-order stamp a rollup change carries on PostgreSQL: the 64-bit id of the
# writing transaction (see `metering.selectors.usage_watermark` for the invariant).
PG_CHANGE_STAMP = "pg_current_xact_id()::text::int8"


class CurrentTransactionId(Func):
    """PG_CHANGE_STAMP for the ORM path (spool replay on PostgreSQL)."""

    template = PG_CHANGE_STAMP
    output_field = BigIntegerField()


def usage_rollups_apply(rows: list[UsageRecord]) -> None:
    """Fold freshly inserted records into hourly rollups (the ORM twin of PG_INSERT_SQL)."""
    postgres = connection.vendor == "postgresql"
    groups: dict[tuple[Any, str, str, datetime], dict[str, Any]] = {}
    for row in rows:
        hour = row.started_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        totals = groups.setdefault(
            (row.tenant_id, row.alias, row.accelerator, hour),
            {"requests": 0, "flagged_requests": 0, "last_record_id": 0}
            | dict.fromkeys(ROLLUP_SUMS, 0),
        )
        totals["last_record_id"] = max(totals["last_record_id"], row.pk or 0)
        if row.flags:
            totals["flagged_requests"] += 1
            continue
        totals["requests"] += 1
        for name in ROLLUP_SUMS:
            totals[name] += getattr(row, name) or 0
    for (tenant_id, alias, accelerator, hour), totals in sorted(
        groups.items(), key=lambda g: str(g[0])
    ):
        last_id = totals.pop("last_record_id")
        # SQLite runs one writer at a time, so record ids commit in order there
        stamp: Any = CurrentTransactionId() if postgres else last_id
        updated = UsageRollup.objects.filter(  # the ORM writer owns shard 0
            tenant_id=tenant_id, alias=alias, accelerator=accelerator, hour=hour, shard=0
        ).update(
            **{name: F(name) + value for name, value in totals.items()},
            last_record_id=Greatest(F("last_record_id"), last_id),
            changed_xid=stamp if postgres else Greatest(F("changed_xid"), last_id),
            updated_at=datetime.now(UTC),
        )
        if not updated:
            UsageRollup.objects.create(
                tenant_id=tenant_id,
                alias=alias,
                accelerator=accelerator,
                hour=hour,
                shard=0,
                last_record_id=last_id,
                changed_xid=stamp,
                **totals,
            )
