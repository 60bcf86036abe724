import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Sum

from metering.ledger import spool
from metering.ledger.orm import OrmLedgerSink, usage_records_write
from metering.ledger.postgres import (
    PG_INSERT_SQL,
    PG_INSERT_TOUCH_SQL,
    PostgresLedgerSink,
    pg_insert_statement,
)
from metering.ledger.spool import spool_replay
from metering.ledger.writer import LedgerWriter, default_sink
from metering.models import UsageRecord
from tests.factories import ApiKeyFactory, UsageRecordFactory
from tests.usage_helpers import (
    record_for,
    rollups_vs_raw_scan,
    route_targets_vs_raw_scan,
    spool_append,
)


@pytest.mark.django_db
def test_write_is_idempotent_per_request_id() -> None:
    key = ApiKeyFactory()
    record = record_for(key)
    assert usage_records_write([record]) == 1
    assert usage_records_write([record, record_for(key)]) == 1  # the repeat is skipped
    assert UsageRecord.objects.count() == 2


@pytest.mark.django_db
def test_touches_key_last_used_in_the_same_transaction() -> None:
    key = ApiKeyFactory()
    record = record_for(key)
    usage_records_write([record], touch_keys=[key.pk])
    key.refresh_from_db()
    assert key.last_used_at == record["finished_at"]


@pytest.mark.django_db
def test_database_refuses_negative_tokens() -> None:
    key = ApiKeyFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        usage_records_write([record_for(key, reasoning_tokens=-1)])


@pytest.mark.django_db
def test_usage_records_are_immutable_in_postgresql() -> None:
    row = UsageRecordFactory()
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        UsageRecord.objects.filter(pk=row.pk).update(reasoning_tokens=0)
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        UsageRecord.objects.filter(pk=row.pk).delete()


class Counting:
    """Wraps a real sink and counts the batches it commits."""

    def __init__(self, sink) -> None:  # type: ignore[no-untyped-def]
        self.sink = sink
        self.concurrency = sink.concurrency
        self.batches: list[int] = []

    async def write(self, records, touch_keys):  # type: ignore[no-untyped-def]
        self.batches.append(len(records))
        await self.sink.write(records, touch_keys)

    async def close(self) -> None:
        await self.sink.close()


def test_postgres_uses_the_single_statement_sink() -> None:
    assert isinstance(default_sink(), PostgresLedgerSink)


def test_the_statement_executed_is_one_bytes_object_made_once() -> None:
    """psycopg hashes a statement's text on every execute: the same bytes object each
    time keeps its hash (a str would be encoded into new bytes, hashed anew)."""
    record = {"finished_at": datetime(2026, 1, 1, tzinfo=UTC)}
    plain, _ = pg_insert_statement([record], [])
    again, _ = pg_insert_statement([record], [])
    touch, _ = pg_insert_statement([record], [1])
    assert plain is again and plain == PG_INSERT_SQL.encode()
    assert touch is pg_insert_statement([record], [2])[0]
    assert touch == PG_INSERT_TOUCH_SQL.encode()


@pytest.mark.parametrize("sink_class", ["orm", "postgres"])
@pytest.mark.django_db(transaction=True)
def test_writer_group_commits_concurrent_records(tmp_path: Path, sink_class: str) -> None:
    key = ApiKeyFactory()
    sink = Counting(OrmLedgerSink() if sink_class == "orm" else default_sink())
    records = [record_for(key) for _ in range(200)]

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=64, spool_dir=tmp_path, sink=sink)  # type: ignore[arg-type]
        await asyncio.gather(*(writer.write(r) for r in records))
        await writer.write(records[0])  # a replayed record is not stored twice
        await writer.close()

    asyncio.run(scenario())
    assert UsageRecord.objects.count() == 200
    assert sum(sink.batches) == 201
    assert len(sink.batches) < 200 / 4  # commits were shared
    assert max(sink.batches) <= 64
    stored = UsageRecord.objects.get(request_id=records[5]["request_id"])
    assert (stored.reasoning_tokens, stored.raw_usage, stored.flags) == (
        50,
        {"prompt_tokens": 10},
        [],
    )
    assert stored.started_at == records[5]["started_at"]
    key.refresh_from_db()
    assert key.last_used_at is not None


@pytest.mark.django_db(transaction=True)
def test_writer_spools_when_database_is_down_and_replays_later(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()

    class BrokenSink:
        concurrency = 2

        async def write(self, records, touch_keys):  # type: ignore[no-untyped-def]
            raise DatabaseError("connection refused")

        async def close(self) -> None:
            pass

    def down(records, **kwargs):  # type: ignore[no-untyped-def]
        raise DatabaseError("still down")

    monkeypatch.setattr(spool, "usage_records_write", down)  # replays fail too
    records = [record_for(key) for _ in range(3)]

    async def scenario() -> None:
        writer = LedgerWriter(
            max_batch=64,
            spool_dir=tmp_path,
            retry_seconds=0.2,
            sink=BrokenSink(),  # type: ignore[arg-type]
            redis_url="",
            shutdown_replay_seconds=1,
        )
        await asyncio.gather(*(writer.write(r) for r in records))  # completes: spooled durably
        assert writer.spooled == 3
        await writer.close()

    asyncio.run(scenario())
    monkeypatch.undo()
    assert UsageRecord.objects.count() == 0
    assert spool_replay(tmp_path) == 3
    assert spool_replay(tmp_path) == 0  # files consumed; a second replay is a no-op
    stored = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert stored == {r["request_id"] for r in records}


def rollups_match_raw_records() -> None:
    """Every rollup equals the sum of its unflagged raw records; flagged ones are counted
    apart (`tests.usage_helpers.rollups_vs_raw_scan`); the per-target tables equal the
    routed records (`route_targets_vs_raw_scan`)."""
    rollups_vs_raw_scan()
    route_targets_vs_raw_scan()


@pytest.mark.parametrize("sink_class", ["orm", "postgres"])
@pytest.mark.django_db(transaction=True)
def test_rollups_equal_raw_records_and_ignore_replays(tmp_path: Path, sink_class: str) -> None:
    from datetime import timedelta

    key, other = ApiKeyFactory(), ApiKeyFactory()
    t0 = datetime(2026, 11, 3, 9, 59, 59, 999999, tzinfo=UTC)
    records = [
        record_for(key, started_at=t0, finished_at=t0),
        record_for(key, started_at=t0 + timedelta(microseconds=1), finished_at=t0),  # next hour
        record_for(
            key,
            started_at=t0,
            finished_at=t0,
            alias="thinker",
            reasoning_tokens=7,
            serving_cost_usd=Decimal("0.000000123456789012345678"),
            reasoning_cost_usd=Decimal("0.000000100000000000000001"),
        ),
        record_for(key, started_at=t0, finished_at=t0, flags=["reasoning_exceeds_output"]),
        record_for(other, started_at=t0, finished_at=t0, input_tokens=3),
        # a route on a provider account, then moved to another one: two rollup keys
        record_for(other, started_at=t0, finished_at=t0, provider_account_id=11),
        record_for(
            other, started_at=t0, finished_at=t0, provider_account_id=12, status="upstream_error"
        ),
        record_for(other, started_at=t0, finished_at=t0, provider_account_id=12, status="failed"),
        # a call that failed over from target 3 to target 4
        record_for(
            other,
            started_at=t0,
            finished_at=t0,
            route_id=3,
            attempt=1,
            failed_over=True,
            status="failed",
            upstream_status=0,
            reasoning_effort="low",
        ),
        record_for(
            other, started_at=t0, finished_at=t0, route_id=4, attempt=2, reasoning_effort="low"
        ),
    ]
    sink = OrmLedgerSink() if sink_class == "orm" else default_sink()

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=2, spool_dir=tmp_path, sink=sink)
        await asyncio.gather(*(writer.write(r) for r in records))
        await asyncio.gather(*(writer.write(r) for r in records[:3]))  # replays add nothing
        await writer.close()

    asyncio.run(scenario())
    rollups_match_raw_records()
    from metering.models import UsageRollup

    first_hour = UsageRollup.objects.filter(
        tenant=key.tenant, alias="reasoner", hour=t0.replace(minute=0, second=0, microsecond=0)
    ).aggregate(r=Sum("requests"), f=Sum("flagged_requests"), t=Sum("reasoning_tokens"))
    assert (first_hour["r"], first_hour["f"], first_hour["t"]) == (1, 1, 50)


@pytest.mark.django_db(transaction=True)
def test_orm_path_folds_into_its_own_shard_next_to_postgres_writers(tmp_path: Path) -> None:
    key = ApiKeyFactory()
    t0 = datetime(2026, 11, 3, 9, tzinfo=UTC)

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=1, spool_dir=tmp_path, sink=default_sink())
        await asyncio.gather(
            *(writer.write(record_for(key, started_at=t0, finished_at=t0)) for _ in range(6))
        )
        await writer.close()

    asyncio.run(scenario())
    usage_records_write([record_for(key, started_at=t0, finished_at=t0)])  # the spool-replay path
    rollups_match_raw_records()


@pytest.mark.django_db(transaction=True)
def test_one_bad_record_does_not_sink_its_batch(tmp_path: Path) -> None:
    key = ApiKeyFactory()
    good = record_for(key)
    huge = record_for(key, output_tokens=2**64)
    nul = record_for(key, upstream_response_id="chatcmpl-\x00bad")
    # routing stamps no column holds (a hand-made or corrupted spool line)
    stamps = record_for(
        key, route_id=3, attempt=70_000, route_reason="r" * 90, reasoning_effort="e" * 30
    )

    async def scenario() -> None:
        writer = LedgerWriter(max_batch=64, spool_dir=tmp_path, sink=default_sink())
        await asyncio.gather(
            writer.write(good), writer.write(huge), writer.write(nul), writer.write(stamps)
        )
        await writer.close()

    asyncio.run(scenario())
    stored = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(stored) == {
        good["request_id"],
        huge["request_id"],
        nul["request_id"],
        stamps["request_id"],
    }
    assert stored[good["request_id"]].flags == []
    assert "quarantined_record" in stored[huge["request_id"]].flags
    assert stored[huge["request_id"]].output_tokens == 0
    assert stored[nul["request_id"]].upstream_response_id == "chatcmpl-bad"
    cut = stored[stamps["request_id"]]
    assert "quarantined_record" in cut.flags
    assert (cut.route_id, cut.attempt, cut.route_reason, cut.reasoning_effort) == (
        3,
        None,
        "r" * 64,
        "e" * 16,
    )


@pytest.mark.django_db(transaction=True)
def test_the_sink_keeps_one_cursor_a_connection_through_refusals_and_breaks() -> None:
    """Batches on one connection share its cursor; a batch the database refuses leaves
    the connection and its cursor usable for the next; a broken connection is replaced
    with a new one and a cursor of its own."""
    key = ApiKeyFactory()
    sink = default_sink()
    assert isinstance(sink, PostgresLedgerSink)

    async def scenario() -> None:
        first, second = record_for(key), record_for(key)
        await sink.write([first], [])
        ((conn, cursor, shard),) = sink._idle
        await sink.write([second], [])
        assert sink._idle == [(conn, cursor, shard)]  # the same cursor
        with pytest.raises(IntegrityError):  # refused: negative tokens
            await sink.write([record_for(key, reasoning_tokens=-1)], [])
        assert sink._idle == [(conn, cursor, shard)]
        with pytest.raises(TypeError):  # a record that cannot be encoded: kept, not leaked
            await sink.write([{**record_for(key), "raw_usage": object()}], [])
        assert sink._idle == [(conn, cursor, shard)]
        third = record_for(key)
        await sink.write([third], [])
        await conn.close()  # broken under the sink
        fourth = record_for(key)
        await sink.write([fourth], [])
        ((new_conn, new_cursor, new_shard),) = sink._idle
        assert new_conn is not conn and new_cursor is not cursor and new_shard == shard
        assert new_cursor.connection is new_conn
        await sink.close()
        return [first, second, third, fourth]

    written = asyncio.run(scenario())
    stored = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert stored == {r["request_id"] for r in written}


@pytest.mark.django_db
def test_duplicate_request_id_inside_one_batch_is_stored_once() -> None:
    key = ApiKeyFactory()
    record = record_for(key)
    assert usage_records_write([record, dict(record)]) == 1


@pytest.mark.django_db(transaction=True)
def test_failed_replay_keeps_the_spool_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    spool_append(tmp_path, [record_for(key)])  # as if written by a writer now gone
    (dead,) = list(tmp_path.glob("ledger-*.jsonl"))

    def down(records, **kwargs):  # type: ignore[no-untyped-def]
        raise DatabaseError("still down")

    monkeypatch.setattr(spool, "usage_records_write", down)
    with pytest.raises(DatabaseError):
        spool_replay(tmp_path)
    assert dead.exists()  # kept for the next try
    monkeypatch.undo()
    assert spool_replay(tmp_path) == 1 and not dead.exists()


@pytest.mark.django_db
def test_tenants_and_keys_with_usage_cannot_be_deleted() -> None:
    from django.db.models import ProtectedError

    row = UsageRecordFactory()
    with pytest.raises(ProtectedError):
        row.api_key.delete()
    with pytest.raises(ProtectedError):
        row.tenant.delete()
    assert UsageRecord.objects.filter(pk=row.pk).exists()


@pytest.mark.django_db
def test_one_tenant_wide_limit_per_window() -> None:
    from metering.models import RateLimit, SpendLimit

    key = ApiKeyFactory()
    SpendLimit.objects.create(tenant=key.tenant, window="month", amount_usd=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        SpendLimit.objects.create(tenant=key.tenant, window="month", amount_usd=2)
    RateLimit.objects.create(tenant=key.tenant, requests_per_minute=10)
    with pytest.raises(IntegrityError), transaction.atomic():
        RateLimit.objects.create(tenant=key.tenant, requests_per_minute=20)


class Gated:
    """A sink of two connections whose commits finish only when the test says so."""

    concurrency = 2

    def __init__(self) -> None:
        self.in_flight: list[int] = []
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def write(self, records, touch_keys):  # type: ignore[no-untyped-def]
        assert self.gate is not None
        self.in_flight.append(len(records))
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        await self.gate.wait()
        self.in_flight.remove(len(records))

    async def close(self) -> None: ...


def test_a_second_commit_goes_out_only_for_a_backlog(tmp_path: Path) -> None:
    sink = Gated()

    async def scenario() -> tuple[list[int], list[int]]:
        sink.gate = asyncio.Event()
        writer = LedgerWriter(max_batch=512, spool_dir=tmp_path, sink=sink, parallel_at=10)  # type: ignore[arg-type]
        first = asyncio.ensure_future(writer.write({"request_id": 0, "api_key_id": 1}))
        await asyncio.sleep(0.01)  # the first record's commit is in flight
        waiting = [
            asyncio.ensure_future(writer.write({"request_id": i, "api_key_id": 1}))
            for i in range(1, 10)
        ]
        await asyncio.sleep(0.01)
        below = list(sink.in_flight)  # nine wait: not enough for the second connection
        waiting.append(asyncio.ensure_future(writer.write({"request_id": 10, "api_key_id": 1})))
        await asyncio.sleep(0.01)
        at = list(sink.in_flight)  # ten wait: they go out beside the first commit
        sink.gate.set()
        await asyncio.gather(first, *waiting)
        await writer.close()
        return below, at

    below, at = asyncio.run(scenario())
    assert below == [1]
    assert at == [1, 10]
