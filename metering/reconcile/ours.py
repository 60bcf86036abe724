"""Our side of reconciliation: what the ledger says it forwarded on a provider account.

Read from the hourly rollups only (`UsageRollup`), never from raw records, in one
grouped query: through `config.db_router.reporting_reads()` (a replica when configured,
so it may lag the primary by its replay lag) for the API and the margin report; on the
primary with `primary=True` (reconciliation's write path, whose rows and alerts must not
see a lagging ledger). Invariants:
- a row is one (UTC day, upstream model, tenant, alias, accelerator) of the account's
  rollups in [start, end) UTC days (`forwarded_totals`: the same without the tenant,
  summed over tenants): the rollups whose provider account stamp is the account's (the
  route's account when each record was served, `UsageRecord.provider_account`), so a
  route moved to another account mid-day counts on each account for its own hours;
- `records` are every record (flagged or not, answered or not): requests +
  flagged_requests; `requests` are answered requests: every record minus those the
  upstream did not answer (status upstream_error or failed: `unanswered_requests`);
- token classes are plain + flagged: what was forwarded counts whether or not it is held
  back from rating. They are the ledger's disjoint classes: `input_tokens` is uncached
  input, `output_tokens` visible output; the provider-side mapping is reconciliation's;
- `serving_cost_usd` is the rated (plain) records' stamped serving cost, exact on
  PostgreSQL (SQLite sums decimals as floats: its last digits may differ);
- rollups folded before migration 0018 (no account stamp existed) carry account 0 and
  never show here;
- `forwarded_usage_by_target` splits the rows by the target that served them too
  (`route_id`, 0 for records from before routing): reconciliation attributes keys per
  target (decision 0117); the other reads sum over targets. An attempt that failed over
  is a record but not an answered request (it is unanswered) with no tokens, so it adds
  no drift.

Speed: a month of a busy account is hundreds of thousands of rows, so the grouped query
is built by the ORM (vendor-neutral SQL, parameters adapted) but run on a plain cursor:
no per-value converters, sums cast to bigint in SQL (PostgreSQL's sum of bigint is
numeric, which would load as Decimal), the tenant grouped as uuid but loaded as text and
parsed once per tenant, rows sorted as tuples in C, and rows built as NamedTuples.
`serving_cost_usd` stays the exact numeric sum on PostgreSQL.
"""

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime, time
from decimal import Context, Decimal
from typing import Any, NamedTuple, TypeVar

from django.db import connections, router
from django.db.models import BigIntegerField, F, Sum
from django.db.models.functions import Cast, TruncDate

from config.db_router import reporting_reads
from metering.models import UsageRollup


class ForwardedRow(NamedTuple):
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


class ForwardedTargetRow(NamedTuple):
    """A `ForwardedRow` of one target (`forwarded_usage_by_target`)."""

    day: date
    upstream_model: str
    tenant_id: uuid.UUID
    alias: str
    accelerator: str
    records: int
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    serving_cost_usd: Decimal
    route_id: int  # the target that served them (0: records from before routing)


class ForwardedTotal(NamedTuple):
    """A `ForwardedRow` summed over tenants."""

    day: date
    upstream_model: str
    alias: str
    accelerator: str
    records: int
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    serving_cost_usd: Decimal


# Token classes summed plain + flagged (`UsageRollup.flagged_<name>`).
_TOKENS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
# SQLite sums decimals as floats; read them as Django's SQLite backend does (15 digits).
_FLOAT_DECIMAL = Context(prec=15).create_decimal_from_float

_Row = TypeVar("_Row", ForwardedRow, ForwardedTotal, ForwardedTargetRow)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _cached(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse`, once per distinct value (a month has few days and tenants, many rows)."""
    seen: dict[Any, Any] = {}

    def cached(value: Any) -> Any:
        found = seen.get(value)
        if found is None:
            found = seen[value] = parse(value)
        return found

    return cached


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _as_decimal(value: Decimal | float | int | None) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        return _FLOAT_DECIMAL(value)
    return Decimal(value)


def _int_sum(expression: Any) -> Cast:
    """A sum of bigint columns as bigint (PostgreSQL's own sum of bigint is numeric)."""
    return Cast(Sum(expression), BigIntegerField())


def _grouped(
    *,
    account_id: int,
    start: date,
    end: date,
    primary: bool,
    by_tenant: bool,
    row: type[_Row],
    by_route: bool = False,
) -> list[_Row]:
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if account_id <= 0 or start == end:
        return []
    sums = {
        "s_records": _int_sum(F("requests") + F("flagged_requests")),
        "s_requests": _int_sum(F("requests") + F("flagged_requests") - F("unanswered_requests")),
        **{f"s_{name}": _int_sum(F(name) + F(f"flagged_{name}")) for name in _TOKENS},
        "s_cost": Sum("serving_cost_usd"),
    }
    keys = [
        "g_day",
        "upstream_model",
        *(["tenant_id"] if by_tenant else []),
        "alias",
        "accelerator",
        *(["route_id"] if by_route else []),
    ]
    scope: AbstractContextManager[None] = nullcontext() if primary else reporting_reads()
    with scope:
        alias = router.db_for_read(UsageRollup)
    query = (
        UsageRollup.objects.using(alias)
        .filter(
            provider_account_id=account_id,
            hour__gte=_midnight(start),
            hour__lt=_midnight(end),
        )
        .annotate(g_day=TruncDate("hour", tzinfo=UTC))
        .values_list(*keys)
        .annotate(**sums)
        .order_by()
    )
    sql, params = query.query.get_compiler(using=alias).as_sql()
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # the tenant as its text (SQLite stores it as text already): parsed once per
            # tenant below, not once per row by the driver
            from psycopg.types.string import TextLoader

            cursor.cursor.adapters.register_loader("uuid", TextLoader)
        cursor.execute(sql, params)
        found = cursor.fetchall()
    found.sort()  # as tuples, in C: day, model, tenant (canonical text sorts as the UUID)...
    day_of = _cached(_as_date)
    if by_route:  # (by tenant too: reconciliation's own read); the route id after the keys
        route_tenant_of = _cached(uuid.UUID)
        return [
            row(  # type: ignore[call-arg]
                day_of(r[0]),
                r[1],
                route_tenant_of(r[2]),
                *r[3:5],
                *r[6:-1],
                _as_decimal(r[-1]),
                r[5],
            )
            for r in found
        ]
    if by_tenant:
        tenant_of = _cached(uuid.UUID)
        return [
            row(day_of(d), m, tenant_of(t), a, acc, *counts, _as_decimal(cost))  # type: ignore[call-arg]
            for d, m, t, a, acc, *counts, cost in found
        ]
    return [
        row(day_of(d), m, a, acc, *counts, _as_decimal(cost))  # type: ignore[call-arg]
        for d, m, a, acc, *counts, cost in found
    ]


def forwarded_usage(
    *, account_id: int, start: date, end: date, primary: bool = False
) -> list[ForwardedRow]:
    """What the ledger forwarded on provider account `account_id` per UTC day, upstream
    model, tenant, alias and accelerator in the days [start, end), sorted by those five.
    A reporting read (the replica when configured) unless `primary`."""
    return _grouped(
        account_id=account_id,
        start=start,
        end=end,
        primary=primary,
        by_tenant=True,
        row=ForwardedRow,
    )


def forwarded_usage_by_target(
    *, account_id: int, start: date, end: date, primary: bool = False
) -> list[ForwardedTargetRow]:
    """`forwarded_usage` split by the target (route) that served the records too, sorted
    by day, model, tenant, alias, accelerator and route id."""
    return _grouped(
        account_id=account_id,
        start=start,
        end=end,
        primary=primary,
        by_tenant=True,
        row=ForwardedTargetRow,
        by_route=True,
    )


def forwarded_totals(
    *, account_id: int, start: date, end: date, primary: bool = False
) -> list[ForwardedTotal]:
    """`forwarded_usage` summed over tenants: per UTC day, upstream model, alias and
    accelerator, sorted by those four. Far fewer rows when reconciliation needs no
    tenant (the per-tenant split is billing's)."""
    return _grouped(
        account_id=account_id,
        start=start,
        end=end,
        primary=primary,
        by_tenant=False,
        row=ForwardedTotal,
    )
