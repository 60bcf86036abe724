"""Property: usage summaries and series served from the hourly rollups (plus the raw
records of the partial hours at the window's edges) equal a plain aggregate of the raw
records written in the test (and so does the selectors' own raw scan), on PostgreSQL,
whatever the records (tenants, keys, aliases, accelerators, flagged or not, any
microsecond), the write path and shard, folded or not, and the window and filters; and
what limits load, a tenant's or a key's, equals the plain sum of its records."""

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.ledger.postgres import pg_insert_statement
from metering.ledger.rollups import usage_rollup_shards_fold
from metering.selectors import UsageFilter, usage_summary
from tests.metering.analytics.usage_world import (
    T0,
    as_ledger_rows,
    assert_forwarded_as_raw,
    assert_limits_read_as_raw,
    assert_rollups_serve_as_raw,
    instants,
    records,
    tenants_with_keys,
    whole_hours,
    windows,
    write_orm,
)
from tests.usage_helpers import rollups_vs_raw_scan, route_targets_vs_raw_scan

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the PostgreSQL paths (SQLite: test_sqlite.py)"
)


def write_postgres(rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Through the proxy's one-statement batch, each record in its drawn shard, on the
    test's own connection (so the test transaction holds them)."""
    connection.ensure_connection()
    cursor = psycopg.RawCursor(connection.connection)
    for shard, row in rows:
        cursor.execute(*pg_insert_statement([row], [], shard))


@pytest.mark.django_db
@settings(max_examples=60)
@given(
    drawn=records,
    path=st.sampled_from(["postgres", "orm"]),
    fold_before=st.none() | instants,
    window=windows(),
    alias=st.none() | st.sampled_from(["reasoner", "Thinker"]),
    key_index=st.none() | st.integers(0, 2),
    limits_since=whole_hours,
)
def test_rollup_served_usage_equals_a_raw_scan(  # type: ignore[no-untyped-def]
    drawn, path, fold_before, window, alias, key_index, limits_since
) -> None:
    world = tenants_with_keys()  # fresh tenants each example
    rows = as_ledger_rows(world, drawn)
    (write_postgres if path == "postgres" else write_orm)(rows)
    if fold_before is not None:
        usage_rollup_shards_fold(before=fold_before, batch_size=5)
    for tenant, keys in world:
        assert_rollups_serve_as_raw(tenant, keys, window, alias, key_index)
        assert_rollups_serve_as_raw(tenant, keys, (None, None), None, None)
        assert_limits_read_as_raw(tenant, keys, limits_since)
    rollups_vs_raw_scan()  # per full rollup key, unanswered requests included
    route_targets_vs_raw_scan()
    assert_forwarded_as_raw()


@pytest.mark.django_db
def test_a_window_inside_one_hour_and_across_hour_edges() -> None:
    """The cases a random draw may miss, spelled out: the whole span, one microsecond,
    a window inside one hour, one ending on an hour, and counts that differ per path."""
    world = tenants_with_keys()
    drawn = [
        {
            "tenant": 0,
            "key": i % 3,
            "alias": "reasoner" if i % 2 else "Thinker",
            "accelerator": "",
            "flagged": i % 5 == 0,
            "started_at": T0 + timedelta(minutes=17 * i),
            "tokens": (i, 1, 2, 3, i % 7),
            "shard": i % 4,
        }
        for i in range(30)
    ]
    write_postgres(as_ledger_rows(world, drawn))
    tenant, keys = world[0]
    assert assert_rollups_serve_as_raw(tenant, keys, (None, None), None, None) == 30
    inside = (T0 + timedelta(minutes=10), T0 + timedelta(minutes=50))
    assert assert_rollups_serve_as_raw(tenant, keys, inside, None, None) == 2  # 17 and 34 min
    assert assert_rollups_serve_as_raw(tenant, keys, (T0, T0 + timedelta(hours=2)), None, None) == 8
    on_the_hour = (T0 - timedelta(hours=1), T0 + timedelta(minutes=30))  # 0 and 17 min
    assert assert_rollups_serve_as_raw(tenant, keys, on_the_hour, None, None) == 2
    edge = (T0 + timedelta(minutes=17), T0 + timedelta(minutes=17, microseconds=1))
    assert assert_rollups_serve_as_raw(tenant, keys, edge, None, None) == 1
    assert usage_rollup_shards_fold(before=T0 + timedelta(days=9)) > 0
    assert assert_rollups_serve_as_raw(tenant, keys, (None, T0 + timedelta(hours=5)), None, 1) == 6


@pytest.mark.django_db
def test_windows_given_at_a_half_hour_offset_cut_utc_hours() -> None:
    """A window in +05:30 starts mid-way through a UTC hour: that hour is an edge."""
    from datetime import timezone

    world = tenants_with_keys()
    drawn = [
        {
            "tenant": 0,
            "key": 0,
            "alias": "reasoner",
            "accelerator": "",
            "flagged": False,
            "started_at": T0 + timedelta(minutes=m),
            "tokens": (1, 0, 0, 0, 0),
            "shard": 1,
        }
        for m in (10, 40, 70)
    ]
    write_postgres(as_ledger_rows(world, drawn))
    tenant, keys = world[0]
    ist = timezone(timedelta(hours=5, minutes=30))
    since = (T0 + timedelta(minutes=30)).astimezone(ist)  # 30 minutes into the UTC hour
    until = (T0 + timedelta(hours=3)).astimezone(ist)
    assert assert_rollups_serve_as_raw(tenant, keys, (since, until), None, None) == 2


@pytest.mark.django_db
def test_a_call_that_failed_over_counts_once_in_analytics() -> None:
    """Decision 0117: an attempt that failed over is a record (rollups: requests +
    flagged, and failed_over_requests) but not a client call; analytics count calls, in
    whole hours (rollups) and in edge hours (raw records) alike."""
    from metering.models import UsageRecord, UsageRollup

    world = tenants_with_keys()
    tenant, keys = world[0]

    def drawn(minutes: int, route: int | None, failed_over: bool, flagged: bool) -> dict[str, Any]:
        return {
            "tenant": 0,
            "key": 0,
            "alias": "reasoner",
            "accelerator": "",
            "flagged": flagged,
            "started_at": T0 + timedelta(minutes=minutes),
            "tokens": (10, 0, 0, 5, 7),
            "shard": minutes % 3,
            "route": route,
            "failed_over": failed_over,
            "effort": "high",
        }

    calls = [
        drawn(5, 11, True, False),  # failed over ...
        drawn(5, 12, False, False),  # ... to this attempt, which answered
        drawn(20, 11, True, True),  # a flagged failed-over attempt ...
        drawn(20, 12, False, True),  # ... and its answer
        drawn(40, None, False, False),  # an unrouted call
    ]
    write_postgres(as_ledger_rows(world, calls))
    assert UsageRecord.objects.filter(tenant_id=tenant.pk).count() == 5
    rolled = UsageRollup.objects.filter(tenant_id=tenant.pk)
    assert sum(r.requests + r.flagged_requests for r in rolled) == 5
    assert sum(r.failed_over_requests for r in rolled) == 2
    assert assert_rollups_serve_as_raw(tenant, keys, (None, None), None, None) == 3
    edge = (T0 + timedelta(minutes=1), T0 + timedelta(minutes=30))  # no whole hour: raw
    assert assert_rollups_serve_as_raw(tenant, keys, edge, None, None) == 2
    summary = usage_summary(filters=UsageFilter(tenant_id=tenant.pk))[0]
    assert (summary["requests"], summary["input_tokens"]) == (3, 30)  # attempts: no tokens
    rollups_vs_raw_scan()
    route_targets_vs_raw_scan()
