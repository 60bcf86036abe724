"""The shard fold (metering.ledger.rollups.usage_rollup_shards_fold): closed hours' write
shards merge into shard 0 keeping every sum, the highest last_record_id and the highest
changed_xid; it is idempotent, leaves open hours alone, and stays exact beside late
writers in real concurrent PostgreSQL transactions."""

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import Max

from metering.ledger.postgres import pg_conninfo, pg_insert_statement
from metering.ledger.rollups import (
    FLAGGED_SUMS,
    ROLLUP_KEY,
    ROLLUP_SUMS,
    SHARDS_FOLD_SQL,
    usage_rollup_shards_fold,
)
from metering.models import UsageRollup
from metering.tasks import fold_rollup_shards
from tests.factories import ApiKeyFactory
from tests.usage_helpers import record_for, rollups_vs_raw_scan, route_targets_vs_raw_scan

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="write shards exist on PostgreSQL only"
)

HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)
COUNTED = ("requests", "flagged_requests", *ROLLUP_SUMS, *(f"flagged_{n}" for n in FLAGGED_SUMS))


def rollups_equal_raw() -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per rollup key (shards summed), the rollups equal a raw scan
    (`tests.usage_helpers.rollups_vs_raw_scan`), and so do the per-target tables
    (`route_targets_vs_raw_scan`). Returns the summed rollups."""
    route_targets_vs_raw_scan()
    return rollups_vs_raw_scan()


def write(conn: psycopg.Connection, rows: list[dict[str, Any]], shard: int) -> None:
    with psycopg.RawCursor(conn) as cursor:
        cursor.execute(*pg_insert_statement(rows, [], shard))


def connect(autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(pg_conninfo(connection.settings_dict), autocommit=autocommit)


def shards() -> list[tuple[datetime, int]]:
    return sorted(UsageRollup.objects.values_list("hour", "shard"))


@pytest.fixture
def sharded_hours():  # type: ignore[no-untyped-def]
    """Two closed hours and an open one written by four writers' shards (0-3): one key
    without a provider account, one on account 5 and target 9 (with a failed call in
    shard 1), and a flagged upstream error."""
    key, other = ApiKeyFactory(), ApiKeyFactory()
    with connect() as conn:
        for shard in range(4):
            for hours in (0, 1, 30):
                at = HOUR + timedelta(hours=hours, minutes=shard)
                rows = [
                    record_for(key, started_at=at, finished_at=at, input_tokens=shard + 1),
                    record_for(
                        other,
                        started_at=at,
                        finished_at=at,
                        alias="thinker",
                        provider_account_id=5,
                        upstream_model="m-5",
                        status="failed" if shard == 1 else "completed",
                        route_id=9,  # a routed target: its hours fold with the rollups
                        reasoning_effort="medium",
                        ttft_us=70_000,
                    ),
                    record_for(
                        key,
                        started_at=at,
                        finished_at=at,
                        flags=["total_mismatch"],
                        status="upstream_error",
                    ),
                ]
                write(conn, rows, shard)
    return key


@pytest.mark.django_db(transaction=True)
def test_fold_merges_closed_hours_keeping_sums_ids_and_stamps(sharded_hours) -> None:  # type: ignore[no-untyped-def]
    before = rollups_equal_raw()
    stamps = dict(
        UsageRollup.objects.values_list(*ROLLUP_KEY[:-1], "hour")
        .values("hour")
        .annotate(m=Max("changed_xid"))
        .values_list("hour", "m")
    )
    assert UsageRollup.objects.filter(hour__lt=HOUR + timedelta(hours=2)).count() == 2 * 2 * 4
    merged = usage_rollup_shards_fold(before=HOUR + timedelta(hours=2), batch_size=5)
    assert merged == 2 * 2 * 3  # shards 1-3 of 2 rows in 2 hours; shard 0 stays
    assert rollups_equal_raw() == before
    closed = UsageRollup.objects.filter(hour__lt=HOUR + timedelta(hours=2))
    assert set(closed.values_list("shard", flat=True)) == {0} and closed.count() == 4
    for hour, stamp in (
        closed.values("hour").annotate(m=Max("changed_xid")).values_list("hour", "m")
    ):
        assert stamp == stamps[hour]  # the fold adds no usage: no window looks changed
    open_hour = UsageRollup.objects.filter(hour=HOUR + timedelta(hours=30))
    assert sorted(set(open_hour.values_list("shard", flat=True))) == [0, 1, 2, 3]
    assert usage_rollup_shards_fold(before=HOUR + timedelta(hours=2)) == 0  # idempotent
    assert rollups_equal_raw() == before


@pytest.mark.django_db(transaction=True)
def test_the_beat_task_folds_hours_closed_longer_than_the_grace(sharded_hours, settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_ROLLUP_FOLD_GRACE_SECONDS = 600
    # 10:09 is 9 minutes after the 09:00 hour closed: within the grace, nothing folds.
    assert fold_rollup_shards.delay((HOUR + timedelta(hours=1, minutes=9)).isoformat()).get() == 0
    # 10:11: the 09:00 hour folds; 10:00 is still open.
    assert fold_rollup_shards.delay((HOUR + timedelta(hours=1, minutes=11)).isoformat()).get() == 6
    assert UsageRollup.objects.filter(hour=HOUR, shard__gt=0).count() == 0
    assert UsageRollup.objects.filter(hour=HOUR + timedelta(hours=1), shard__gt=0).count() == 6
    rollups_equal_raw()


def _in_thread(target) -> threading.Thread:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_fold_waits_for_a_late_writer_and_folds_its_usage(sharded_hours) -> None:  # type: ignore[no-untyped-def]
    """A late record's batch (uncommitted) holds a closed hour's shard-3 row: the fold
    waits for it, then merges the row as the writer left it."""
    key = sharded_hours
    late = record_for(key, started_at=HOUR, finished_at=HOUR, input_tokens=1000)
    with connect(autocommit=False) as writer, connect() as folder:
        write(writer, [late], 3)

        def fold() -> None:
            folder.execute(SHARDS_FOLD_SQL, {"before": HOUR + timedelta(hours=2), "batch": 100})

        thread = _in_thread(fold)
        time.sleep(0.5)
        assert thread.is_alive()  # waiting on the writer's row lock
        writer.commit()
        thread.join(10)
        assert not thread.is_alive() and not thread.errors  # type: ignore[attr-defined]
    assert UsageRollup.objects.filter(shard__gt=0, hour__lt=HOUR + timedelta(hours=2)).count() == 0
    rollups_equal_raw()
    row = UsageRollup.objects.get(hour=HOUR, api_key_id=key.pk, alias="reasoner")
    assert row.input_tokens == 1 + 2 + 3 + 4 + 1000


@pytest.mark.django_db(transaction=True)
def test_a_late_writer_waits_for_the_fold_and_lands_in_its_shard_again(sharded_hours) -> None:  # type: ignore[no-untyped-def]
    """The fold (uncommitted) has deleted a closed hour's shard rows: a late record for
    that hour waits, then lands in a fresh row of its writer's shard, folded next time;
    the late record's stamp survives the fold, so billing still sees late usage."""
    key = sharded_hours
    late = record_for(key, started_at=HOUR, finished_at=HOUR, input_tokens=1000)
    with connect(autocommit=False) as folder, connect() as writer:
        folder.execute(SHARDS_FOLD_SQL, {"before": HOUR + timedelta(hours=2), "batch": 100})
        thread = _in_thread(lambda: write(writer, [late], 3))
        time.sleep(0.5)
        assert thread.is_alive()  # waiting on the fold's deleted row
        folder.commit()
        thread.join(10)
        assert not thread.is_alive() and not thread.errors  # type: ignore[attr-defined]
    fresh = UsageRollup.objects.get(hour=HOUR, shard=3)
    assert (fresh.requests, fresh.input_tokens) == (1, 1000)
    rollups_equal_raw()
    assert usage_rollup_shards_fold(before=HOUR + timedelta(hours=2)) == 1
    rollups_equal_raw()
    row = UsageRollup.objects.get(hour=HOUR, api_key_id=key.pk, alias="reasoner")
    assert (row.shard, row.input_tokens, row.changed_xid) == (
        0,
        1 + 2 + 3 + 4 + 1000,
        fresh.changed_xid,
    )
