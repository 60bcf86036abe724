"""The partitioned ledger (migration 0013, `metering.ledger.partitions`, decision 0112):
request ids that carry their start time, global idempotency across partitions, the
partition catalog without gaps, immutability on every partition, a missing month spooled
rather than quarantined, and the migration keeping rows and ids. PostgreSQL unless said."""

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum
from hypothesis import given
from hypothesis import strategies as st

from config.celery import app
from metering.calendar import month_day, month_start
from metering.ledger import partitions
from metering.ledger.orm import usage_records_write
from metering.ledger.partitions import (
    STARTUP_LEAD,
    is_missing_partition,
    partition_create,
    partition_detach_drop,
    partition_name,
    partitions_bounds,
    partitions_cover,
    partitions_ensure,
    partitions_list,
    partitions_maintain,
    partitions_startup_refusal,
)
from metering.ledger.postgres import PostgresLedgerSink, pg_conninfo
from metering.ledger.record import request_id_for, started_at_of
from metering.ledger.spool import spool_replay
from metering.ledger.writer import LedgerWriter, default_sink
from metering.models import UsageRecord, UsageRollup
from metering.tasks import ledger_partitions_ensure
from tests.factories import ApiKeyFactory, UsageRecordFactory
from tests.usage_helpers import ensure_test_partitions, record_for, spool_append

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the ledger is partitioned on PostgreSQL only"
)
# Far enough ahead that no partition exists there unless a test makes it.
FAR = datetime(2031, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)


def v7_record(key: Any, started_at: datetime, **overrides: Any) -> dict[str, Any]:
    """A record as the proxy makes it now: its request id carries its start."""
    return record_for(
        key,
        request_id=request_id_for(started_at),
        started_at=started_at,
        finished_at=started_at,
        **overrides,
    )


# --- request ids (pure; any database) --------------------------------------------------

# hypothesis takes naive bounds and adds the time zone itself
instants = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(instants)
def test_a_request_id_carries_its_started_at_exactly(started_at: datetime) -> None:
    request_id = request_id_for(started_at)
    assert request_id.version == 7
    assert request_id.variant == uuid.RFC_4122
    assert started_at_of(request_id) == started_at


@given(instants, instants)
def test_request_ids_sort_by_time(a: datetime, b: datetime) -> None:
    if a != b:
        assert (request_id_for(a).bytes < request_id_for(b).bytes) == (a < b)


def test_two_ids_of_one_instant_differ_and_legacy_ids_carry_no_time() -> None:
    now = datetime.now(UTC)
    assert request_id_for(now) != request_id_for(now)
    assert started_at_of(uuid.uuid4()) is None
    with pytest.raises(ValueError, match="outside"):
        request_id_for(datetime(1969, 12, 31, tzinfo=UTC))


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite: not partitioned")
@pytest.mark.django_db
def test_on_sqlite_the_partition_api_says_not_partitioned() -> None:
    assert not partitions.is_partitioned()
    assert partitions_list() == []
    assert partitions_ensure(ahead_months=3) == []
    assert partition_create(FAR) is False
    assert partition_detach_drop(FAR) is False
    assert partitions_cover(FAR + timedelta(days=3650))
    assert partitions_startup_refusal(ahead_months=3) is None
    key = ApiKeyFactory()
    record = v7_record(key, FAR)  # any month: one table
    assert usage_records_write([record]) == 1
    assert usage_records_write([record]) == 0


# --- the SQL side of the id --------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_the_database_decodes_what_request_id_for_encodes_in_any_time_zone() -> None:
    cases = [
        datetime(2026, 12, 4, 17, 30, 1, 123456, tzinfo=UTC),
        datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, 0, 999, tzinfo=UTC),  # a DST change in Europe
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2199, 12, 31, 23, 59, 59, 1000, tzinfo=UTC),
    ]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'Europe/Paris'")
        for at in cases:
            cursor.execute(
                "SELECT metering_uuid7_started_at(%s) = %s::timestamptz",
                [request_id_for(at), at.isoformat()],
            )
            assert cursor.fetchone()[0] is True, at
        cursor.execute("SELECT metering_uuid7_started_at(%s)", [uuid.uuid4()])
        assert cursor.fetchone()[0] is None


# Migration 0013's body of metering_uuid7_started_at: the reference its rewrite
# (migration 0028) must agree with on every id.
UUID7_STARTED_AT_0013 = (
    "SELECT CASE WHEN substr(h, 13, 1) = '7' THEN"
    " timestamptz '1970-01-01 00:00:00+00'"
    " + (('x' || lpad(substr(h, 1, 12), 16, '0'))::bit(64)::bigint * 1000"
    " + ('x' || lpad(substr(h, 14, 3), 16, '0'))::bit(64)::bigint)"
    " * interval '1 microsecond' END"
)


@postgres_only
@pytest.mark.django_db
def test_the_database_decodes_every_id_as_migration_0013_did() -> None:
    """Random ids of every version and variant, version 7 with the extreme times, NULL."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH ids AS (SELECT id FROM (SELECT md5(random()::text || i)::uuid AS id"  # noqa: S608
            " FROM generate_series(1, 20000) AS i) AS r"
            " UNION ALL SELECT overlay(md5(random()::text || i) PLACING '7' FROM 13)::uuid"
            " FROM generate_series(1, 20000) AS i"
            " UNION ALL SELECT unnest(ARRAY['ffffffff-ffff-7fff-ffff-ffffffffffff',"
            " '00000000-0000-7000-0000-000000000000', '00000000-0000-6fff-0000-000000000000']"
            "::uuid[]) UNION ALL SELECT NULL)"
            " SELECT count(*), count(*) FILTER (WHERE metering_uuid7_started_at(id)"
            f" IS DISTINCT FROM (SELECT ({UUID7_STARTED_AT_0013})"
            " FROM (SELECT replace(id::text, '-', '') AS h) AS x)) FROM ids"
        )
        assert cursor.fetchone() == (40004, 0)


@postgres_only
@pytest.mark.django_db
def test_the_request_id_check_is_compiled_once_per_connection_not_per_statement() -> None:
    """An SQL-language function in a CHECK is parsed and planned again by every insert
    into the ledger (PostgreSQL 15 caches nothing of it); a PL/pgSQL one is compiled once
    per connection and keeps its plan (migration 0028)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
            " WHERE p.oid = 'metering_uuid7_started_at(uuid)'::regprocedure"
        )
        assert cursor.fetchone() == ("plpgsql",)


# --- the catalog guard -------------------------------------------------------------------


def catalog_problems(until: datetime) -> list[str]:
    """Why some instant in [oldest partition, until) would find no partition, or two:
    gaps, overlaps, a DEFAULT partition, coverage short of `until`. Empty: sound."""
    problems = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partdefid FROM pg_partitioned_table WHERE partrelid = %s::regclass",
            [partitions.PARENT],
        )
        row = cursor.fetchone()
    if row is None:
        return ["the ledger is not a partitioned table"]
    if row[0] != 0:
        problems.append("a DEFAULT partition exists")
    bounds = partitions_bounds()
    if not bounds:
        return [*problems, "no partitions"]
    for (name, low, high), (next_name, next_low, _) in zip(bounds, bounds[1:], strict=False):
        if low >= high:
            problems.append(f"{name} is not a range")
        if high < next_low:
            problems.append(f"gap [{high}, {next_low}) between {name} and {next_name}")
        if high > next_low:
            problems.append(f"{name} overlaps {next_name}")
    covered_until = max(high for _, _, high in bounds)
    if covered_until < until:
        problems.append(f"coverage ends at {covered_until}, short of {until}")
    return problems


def lead_end() -> datetime:
    """The end of the months the beat task keeps ready after the current one."""
    first = month_start(datetime.now(UTC))
    return month_day(first.year, first.month + settings.RECKON_LEDGER_PARTITIONS_AHEAD + 1)


@postgres_only
@pytest.mark.django_db
def test_every_instant_from_the_oldest_partition_to_the_lead_has_exactly_one() -> None:
    assert catalog_problems(lead_end()) == []
    names = [name for name, _ in partitions_list()]
    assert len(names) == len(set(names))
    assert all(name == partition_name(month) for month, name in partitions_list())


@postgres_only
@pytest.mark.django_db
def test_the_catalog_guard_sees_a_gap_a_default_partition_and_a_short_lead() -> None:
    """The guard above can fail (all DDL here is rolled back with the test)."""
    months = [month for month, _ in partitions_list()]
    middle = months[len(months) // 2]
    with connection.cursor() as cursor:
        cursor.execute(
            f'ALTER TABLE {partitions.PARENT} DETACH PARTITION "{partition_name(middle)}"'
        )
        problems = catalog_problems(lead_end())
        assert any(p.startswith("gap") for p in problems), problems
        assert not partitions_cover(lead_end(), since=months[0])
        cursor.execute(
            f"CREATE TABLE {partitions.PARENT}_default PARTITION OF {partitions.PARENT} DEFAULT"
        )
    assert "a DEFAULT partition exists" in catalog_problems(lead_end())
    far_lead = lead_end() + timedelta(days=400)
    assert any(p.startswith("coverage ends") for p in catalog_problems(far_lead))


# --- immutability on every partition -----------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_every_partition_carries_both_triggers() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, array_agg(t.tgname ORDER BY t.tgname)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " LEFT JOIN pg_trigger t ON t.tgrelid = c.oid"
            " WHERE i.inhparent = %s::regclass GROUP BY c.relname",
            [partitions.PARENT],
        )
        triggers = dict(cursor.fetchall())
    assert triggers and set(triggers) == {name for _, name in partitions_list()}
    for name, names in triggers.items():
        assert names == [
            "metering_usage_record_immutable",
            "metering_usage_record_no_truncate",
        ], name


@postgres_only
@pytest.mark.django_db
def test_update_delete_and_truncate_are_refused_on_the_parent_and_on_a_partition() -> None:
    row = UsageRecordFactory()
    partition = partition_name(row.started_at)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL reckon.ledger_truncate = 'deny'")  # the conftest allows it
        for table in (partitions.PARENT, partition):
            for statement in (
                f'UPDATE "{table}" SET output_tokens = 0 WHERE id = %s',  # noqa: S608 - our names
                f'DELETE FROM "{table}" WHERE id = %s',  # noqa: S608 - our names
            ):
                with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
                    cursor.execute(statement, [row.pk])
            with pytest.raises(DatabaseError, match="TRUNCATE"), transaction.atomic():
                cursor.execute(f'TRUNCATE "{table}"')
    assert UsageRecord.objects.filter(pk=row.pk).exists()


@postgres_only
@pytest.mark.django_db
def test_a_partition_created_later_is_immutable_too() -> None:
    assert partition_create(FAR)
    key = ApiKeyFactory()
    usage_records_write([v7_record(key, FAR)])
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL reckon.ledger_truncate = 'deny'")
        with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
            cursor.execute(f'DELETE FROM "{partition_name(FAR)}"')  # noqa: S608
        with pytest.raises(DatabaseError, match="TRUNCATE"), transaction.atomic():
            cursor.execute(f'TRUNCATE "{partition_name(FAR)}"')
    assert UsageRecord.objects.filter(started_at=FAR).count() == 1


# --- the partition API -------------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_ensure_is_idempotent_and_detach_drop_removes_one_month() -> None:
    now = FAR
    created = partitions_ensure(ahead_months=2, now=now)
    assert [name for _, name in created] == [
        "metering_usagerecord_p2031_01",
        "metering_usagerecord_p2031_02",
        "metering_usagerecord_p2031_03",
    ]
    assert partitions_ensure(ahead_months=2, now=now) == []
    assert partitions_cover(
        datetime(2031, 4, 1, tzinfo=UTC), since=datetime(2031, 1, 1, tzinfo=UTC)
    )
    assert not partitions_cover(
        datetime(2031, 4, 1, 0, 0, 1, tzinfo=UTC), since=datetime(2031, 1, 1, tzinfo=UTC)
    )
    key = ApiKeyFactory()
    usage_records_write([v7_record(key, FAR + timedelta(days=31))])  # February
    assert partition_detach_drop(FAR + timedelta(days=31)) is True
    assert partition_detach_drop(FAR + timedelta(days=31)) is False
    assert UsageRecord.objects.filter(started_at__gte=FAR).count() == 0
    assert partition_name(FAR + timedelta(days=31)) not in dict(
        (name, month) for month, name in partitions_list()
    )
    assert partition_create(FAR + timedelta(days=31)) is True  # a restore makes it again


@postgres_only
@pytest.mark.django_db
def test_maintain_logs_an_error_when_coverage_is_short(caplog: pytest.LogCaptureFixture) -> None:
    blocked = month_day(FAR.year, FAR.month + 1)
    with connection.cursor() as cursor:  # a stray table of the partition's name
        cursor.execute(f'CREATE TABLE "{partition_name(blocked)}" (LIKE {partitions.PARENT})')
    with caplog.at_level(logging.ERROR, logger=partitions.__name__):
        maintained = partitions_maintain(ahead_months=1, now=FAR)
    assert maintained.created == [(month_start(FAR), partition_name(FAR))]
    assert maintained.covered is False
    assert "do not cover" in caplog.text
    refusal = partitions_startup_refusal(ahead_months=1, now=FAR + timedelta(days=5))
    assert refusal is not None and "do not cover" in refusal


@postgres_only
@pytest.mark.django_db
def test_start_up_passes_when_the_next_month_is_covered() -> None:
    assert partitions_startup_refusal(ahead_months=settings.RECKON_LEDGER_PARTITIONS_AHEAD) is None
    now = datetime.now(UTC)
    assert partitions_cover(now + STARTUP_LEAD, since=now)


def test_the_beat_schedule_ensures_partitions_hourly_with_a_registered_task() -> None:
    (entry,) = [
        e
        for e in settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == "metering.tasks.ledger_partitions_ensure"
    ]
    assert entry["schedule"] == 3600.0
    assert "queue" not in entry.get("options", {})  # the default queue
    assert ledger_partitions_ensure.name in app.tasks


@postgres_only
@pytest.mark.django_db
def test_the_task_makes_the_months_ahead_of_as_of() -> None:
    made = ledger_partitions_ensure.delay(as_of=FAR.isoformat()).get()
    assert made == settings.RECKON_LEDGER_PARTITIONS_AHEAD + 1
    assert ledger_partitions_ensure.delay(as_of=FAR.isoformat()).get() == 0


# --- global idempotency ------------------------------------------------------------------


def count_of(request_id: uuid.UUID) -> int:
    return UsageRecord.objects.filter(request_id=request_id).count()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_one_v7_id_counts_once_in_a_batch_across_batches_and_from_the_spool(
    tmp_path: Path,
) -> None:
    key = ApiKeyFactory()
    now = datetime.now(UTC)
    march = datetime(2026, 3, 10, 8, 0, 0, 500, tzinfo=UTC)
    a, b = v7_record(key, now, output_tokens=7), v7_record(key, march, output_tokens=11)

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=64, spool_dir=tmp_path, sink=default_sink(), redis_url="")
        await asyncio.gather(writer.write(a), writer.write(dict(a)), writer.write(b))
        await writer.write(dict(a))  # another batch
        await writer.close()

    asyncio.run(scenario())
    spool_append(tmp_path, [a, b])  # a spool replayed after the ledger has them
    assert spool_replay(tmp_path) == 0
    assert count_of(a["request_id"]) == count_of(b["request_id"]) == 1
    assert UsageRecord.objects.count() == 2
    # ids of different months land in their months' partitions
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM metering_usagerecord ORDER BY id")
        assert sorted(r[0] for r in cursor.fetchall()) == sorted(
            [partition_name(now), partition_name(march)]
        )
    rolled = UsageRollup.objects.aggregate(requests=Sum("requests"), output=Sum("output_tokens"))
    assert rolled == {"requests": 2, "output": 18}


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_moved_started_at_is_refused_not_counted_twice(tmp_path: Path) -> None:
    key = ApiKeyFactory()
    original = v7_record(key, datetime(2026, 3, 10, 8, 0, tzinfo=UTC), output_tokens=5)
    moved = {**original, "started_at": datetime(2026, 5, 2, tzinfo=UTC)}  # another partition

    async def direct() -> None:
        sink = PostgresLedgerSink(connection_info())
        try:
            await sink.write([original], [])
            with pytest.raises(IntegrityError, match="usage_request_id_encodes_started_at"):
                await sink.write([moved], [])
        finally:
            await sink.close()

    asyncio.run(direct())
    assert usage_records_write([moved]) == 0  # the spool's replay path: the id is stored

    async def through_the_writer() -> None:
        writer = LedgerWriter(max_batch=64, spool_dir=tmp_path, sink=default_sink(), redis_url="")
        await writer.write(moved)  # quarantined under the id's own start: a conflict
        await writer.close()

    asyncio.run(through_the_writer())
    (stored,) = UsageRecord.objects.filter(request_id=original["request_id"])
    assert (stored.started_at, stored.flags, stored.output_tokens) == (
        original["started_at"],
        [],
        5,
    )
    assert UsageRollup.objects.aggregate(n=Sum("requests"))["n"] == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_record_whose_id_and_start_disagree_is_stored_once_under_the_ids_start(
    tmp_path: Path,
) -> None:
    key = ApiKeyFactory()
    true_start = datetime(2026, 4, 3, 12, 0, 0, 42, tzinfo=UTC)
    record = {**v7_record(key, true_start), "started_at": true_start + timedelta(hours=1)}

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=64, spool_dir=tmp_path, sink=default_sink(), redis_url="")
        await writer.write(record)
        await writer.write(dict(record))
        await writer.close()

    asyncio.run(scenario())
    (stored,) = UsageRecord.objects.filter(request_id=record["request_id"])
    assert stored.started_at == true_start
    assert {"started_at_mismatch", "quarantined_record"} <= set(stored.flags)
    assert writer_spool_empty(tmp_path)


# --- a month without its partition -------------------------------------------------------


def connection_info() -> str:
    return pg_conninfo(connection.settings_dict)


def writer_spool_empty(spool_dir: Path) -> bool:
    return not any(p.stat().st_size for p in spool_dir.glob("ledger-*.jsonl"))


@pytest.fixture
def far_month_dropped_after():  # type: ignore[no-untyped-def]
    """A transactional test's partitions outlive it: drop the far month's afterwards, so
    the catalog guard sees the suite's own range only."""
    yield
    partition_detach_drop(FAR)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_month_without_partition_is_spooled_not_quarantined_then_loaded_once(
    tmp_path: Path,
    far_month_dropped_after: None,
) -> None:
    key = ApiKeyFactory()
    now, record = v7_record(key, datetime.now(UTC)), v7_record(key, FAR, output_tokens=3)

    async def direct() -> None:
        sink = PostgresLedgerSink(connection_info())
        try:
            with pytest.raises(DatabaseError) as refused:
                await sink.write([record], [])
            assert not isinstance(refused.value, IntegrityError)
            assert is_missing_partition(refused.value)
        finally:
            await sink.close()

    asyncio.run(direct())

    async def scenario() -> int:
        writer = LedgerWriter(
            max_batch=64,
            spool_dir=tmp_path,
            retry_seconds=0.3,
            sink=default_sink(),
            redis_url="",
            shutdown_replay_seconds=1,
        )
        await asyncio.gather(writer.write(now), writer.write(record))
        await writer.close()
        return writer.spooled

    spooled = asyncio.run(scenario())
    assert spooled >= 1  # its batch went to the spool (the current month's record may too)
    assert count_of(record["request_id"]) == 0
    assert not UsageRecord.objects.filter(flags__contains=["quarantined_record"]).exists()
    with pytest.raises(IntegrityError):  # the replay keeps it while the month is missing
        spool_replay(tmp_path)
    assert partition_create(FAR)
    spool_replay(tmp_path)
    assert spool_replay(tmp_path) == 0
    assert count_of(record["request_id"]) == count_of(now["request_id"]) == 1
    (stored,) = UsageRecord.objects.filter(request_id=record["request_id"])
    assert (stored.flags, stored.output_tokens, stored.started_at) == ([], 3, FAR)


# --- the migration -----------------------------------------------------------------------


def migrate_metering(target: str) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    if target == "latest":
        executor.migrate(executor.loader.graph.leaf_nodes())
    else:
        executor.migrate([("metering", target)])


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_rows_and_ids_and_the_sequence_continues() -> None:
    key = ApiKeyFactory()
    migrate_metering("0012_usage_watermark")
    try:
        at = [
            datetime(2024, 6, 15, 1, 2, 3, 4, tzinfo=UTC),
            datetime(2026, 2, 1, tzinfo=UTC),
            datetime.now(UTC),
        ]
        ids = [request_id_for(at[0]), uuid.uuid4(), request_id_for(at[2])]
        with connection.cursor() as cursor:
            for request_id, started_at in zip(ids, at, strict=True):
                cursor.execute(
                    "INSERT INTO metering_usagerecord (request_id, tenant_id, api_key_id, alias,"
                    " provider, upstream_model, accelerator, endpoint, stream, status,"
                    " upstream_status, upstream_response_id, input_tokens, cached_input_tokens,"
                    " cache_write_tokens, output_tokens, reasoning_tokens, reasoning_source,"
                    " flags, client_disconnected, latency_us, started_at, finished_at,"
                    " recorded_at) VALUES (%s, %s, %s, 'a', 'openai', 'm', '',"
                    " 'chat.completions', false, 'completed', 200, '', 1, 0, 0, 2, 0, 'none',"
                    " '[]', false, 1, %s, %s, now())",
                    [request_id, key.tenant_id, key.pk, started_at, started_at],
                )
            # The rollups that agree with them, in the shape of 0012 (migration 0014
            # rebuilds rollups from the records and refuses if the two disagree).
            cursor.execute(
                "INSERT INTO metering_usagerollup (tenant_id, alias, accelerator, hour, shard,"
                " requests, flagged_requests, input_tokens, cached_input_tokens,"
                " cache_write_tokens, output_tokens, reasoning_tokens, serving_cost_usd,"
                " reasoning_cost_usd, spend_usd, last_record_id, changed_xid, updated_at)"
                " SELECT tenant_id, alias, accelerator, date_trunc('hour', started_at, 'UTC'),"
                " 0, count(*), 0, sum(input_tokens), 0, 0, sum(output_tokens), 0, 0, 0, 0,"
                " max(id), 0, now() FROM metering_usagerecord GROUP BY 1, 2, 3, 4"
            )
            cursor.execute("SELECT id, request_id, started_at FROM metering_usagerecord")
            before = sorted(cursor.fetchall())
    finally:
        migrate_metering("latest")
        ensure_test_partitions()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, request_id, started_at FROM metering_usagerecord")
        assert sorted(cursor.fetchall()) == before
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'metering_usagerecord'")
        assert cursor.fetchone()[0] == "p"
    assert partition_name(at[0]) in {name for _, name in partitions_list()}
    assert catalog_problems(lead_end()) == []
    later = UsageRecordFactory(api_key=key, tenant=key.tenant)
    assert later.pk == max(row[0] for row in before) + 1  # the sequence went on


# --- the operators' command --------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_lists_and_ensures_partitions() -> None:
    out = StringIO()
    call_command("ledger_partitions", "--ensure", "--ahead", "3", stdout=out)
    if connection.vendor != "postgresql":
        assert "not partitioned" in out.getvalue()
        return
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [name for _, name in partitions_list()]
    assert f"{partition_name(datetime.now(UTC))}  [" in out.getvalue()
    with pytest.raises(CommandError, match="--ahead"):
        call_command("ledger_partitions", "--ensure", "--ahead", "-1")


@postgres_only
@pytest.mark.django_db
def test_the_command_fails_when_a_server_would_refuse_to_start() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f'ALTER TABLE {partitions.PARENT} DETACH PARTITION "{partition_name(datetime.now(UTC))}"'
        )
    with pytest.raises(CommandError, match="do not cover"):
        call_command("ledger_partitions", stdout=StringIO())
