"""Random usage for the analytics property tests: records over a few days (hour
boundaries likely), written through the ledger's write paths into random shards, and
random windows and filters."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from metering.ledger.orm import usage_records_write
from metering.models import ApiKey, Tenant
from metering.selectors import (
    GRANULARITIES,
    GROUPINGS,
    UsageFilter,
    usage_series,
    usage_series_raw,
    usage_summary,
    usage_summary_raw,
)
from tests.usage_helpers import record_for

T0 = datetime(2026, 11, 29, 21, tzinfo=UTC)  # a month's end inside the span
SPAN_HOURS = 72
HOUR_US = 3_600_000_000

# An instant: on an hour, a microsecond either side of one, or anywhere in it.
instants = st.builds(
    lambda hour, kind, anywhere: (
        T0
        + timedelta(
            microseconds=hour * HOUR_US + {"on": 0, "before": -1, "after": 1, "any": anywhere}[kind]
        )
    ),
    st.integers(0, SPAN_HOURS - 1),
    st.sampled_from(["on", "before", "after", "any"]),
    st.integers(0, HOUR_US - 1),
)

records = st.lists(
    st.fixed_dictionaries(
        {
            "tenant": st.integers(0, 1),
            "key": st.integers(0, 2),
            "alias": st.sampled_from(["reasoner", "Thinker", "b-2"]),
            "accelerator": st.sampled_from(["", "h100"]),
            "flagged": st.booleans(),
            "started_at": instants,
            "tokens": st.tuples(*(st.integers(0, 1000) for _ in range(5))),
            "shard": st.integers(0, 3),
        }
    ),
    min_size=0,
    max_size=40,
)


@st.composite
def windows(draw: st.DrawFn) -> tuple[datetime | None, datetime | None]:
    since = draw(st.none() | instants)
    until = draw(st.none() | instants)
    if since is not None and until is not None and since >= until:
        since, until = until, since + timedelta(microseconds=1) if since == until else since
    return since, until


def tenants_with_keys() -> list[tuple[Tenant, list[ApiKey]]]:
    world = []
    for name in ("acme", "globex"):
        tenant = Tenant.objects.create(name=f"{name}-{uuid.uuid4().hex[:8]}")
        keys = [
            ApiKey.objects.create(tenant=tenant, prefix=f"rk_{i}", key_hash=uuid.uuid4().hex)
            for i in range(3)
        ]
        world.append((tenant, keys))
    return world


def as_ledger_rows(world: list[tuple[Tenant, list[ApiKey]]], drawn: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """(shard, ledger row) per drawn record."""
    rows = []
    for r in drawn:
        key = world[r["tenant"]][1][r["key"]]
        tokens = dict(
            zip(
                (
                    "input_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                ),
                r["tokens"],
                strict=True,
            )
        )
        row = record_for(
            key,
            alias=r["alias"],
            accelerator=r["accelerator"],
            flags=["reasoning_exceeds_output"] if r["flagged"] else [],
            started_at=r["started_at"],
            finished_at=r["started_at"],
            **tokens,
        )
        rows.append((r["shard"], row))
    return rows


def write_orm(rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Through the ORM path (shard 0), in a few batches."""
    for i in range(0, len(rows), 7):
        usage_records_write([row for _, row in rows[i : i + 7]])


def assert_rollups_serve_as_raw(
    tenant: Tenant,
    keys: list[ApiKey],
    window: tuple[datetime | None, datetime | None],
    alias: str | None,
    key_index: int | None,
) -> int:
    """Every summary grouping and every series granularity and grouping, rollup-served,
    equal the raw scan for the window and filters. Returns the requests in the window."""
    filters = UsageFilter(
        tenant_id=tenant.pk,
        since=window[0],
        until=window[1],
        alias=alias,
        api_key_id=None if key_index is None else keys[key_index].pk,
    )
    for group_by in (None, *sorted(GROUPINGS)):
        served = usage_summary(filters=filters, group_by=group_by)
        assert served == usage_summary_raw(filters=filters, group_by=group_by), group_by
    for granularity in GRANULARITIES:
        for group_by in (None, "alias", "api_key"):
            served = usage_series(filters=filters, granularity=granularity, group_by=group_by)
            raw = usage_series_raw(filters=filters, granularity=granularity, group_by=group_by)
            assert served == raw, (granularity, group_by)
    return int(usage_summary(filters=filters)[0]["requests"])
