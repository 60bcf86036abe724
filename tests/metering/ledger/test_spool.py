"""The ledger spool: records a writer could not commit reach the ledger as soon as the
database answers again (no traffic needed), at start-up and at shutdown; spool files are
named per host, process and boot, and claimed by lock, not by pid liveness; unreplayed
spool is reported in Redis for period closes on any machine. Real PostgreSQL and Redis:
the outage is a window during which the writer's sink and the replay path raise the
errors a dead database raises."""

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import DatabaseError, connection

from metering.ledger import spool
from metering.ledger.partitions import partition_create
from metering.ledger.spool import spool_replay
from metering.ledger.writer import LedgerWriter, default_sink
from metering.models import LedgerArchive, UsageRecord
from tests.factories import ApiKeyFactory
from tests.usage_helpers import (
    record_for,
    rollups_vs_raw_scan,
    route_targets_vs_raw_scan,
    spool_append,
)

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
PROBE = 0.2  # seconds: the writers' probe interval in these tests

pytestmark = pytest.mark.django_db(transaction=True)


class Outage:
    """While `down`, the writer's sink and the replay's inserts fail as they do when
    PostgreSQL is stopped; once up, both reach the real database."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        self.sink = default_sink()
        self.concurrency = self.sink.concurrency
        real_write = spool.usage_records_write

        def replay_write(records: list[dict[str, Any]], **kwargs: Any) -> int:
            if self.down:
                raise DatabaseError("connection refused")
            return real_write(records, **kwargs)

        monkeypatch.setattr(spool, "usage_records_write", replay_write)

    async def write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        if self.down:
            raise DatabaseError("connection refused")
        await self.sink.write(records, touch_keys)

    async def close(self) -> None:
        await self.sink.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    for key in client.scan_iter("rk:spool:*"):
        client.delete(key)
    client.delete("rk:spool-writers")


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Outage:
    """The database down (until the test sets `outage.down = False`)."""
    return Outage(monkeypatch)


@pytest.fixture
def key() -> Any:
    return ApiKeyFactory()


def stored(records: list[dict[str, Any]]) -> int:
    ids = [r["request_id"] for r in records]
    return UsageRecord.objects.filter(request_id__in=ids).count()


def stored_elsewhere(records: list[dict[str, Any]]) -> int:
    """`stored` on a worker thread, leaving no database session behind."""
    try:
        return stored(records)
    finally:
        connection.close()


async def wait_stored(records: list[dict[str, Any]], within: float) -> float:
    """Seconds until every record is in the ledger (fails after `within`)."""
    began = time.monotonic()
    while await asyncio.to_thread(stored_elsewhere, records) < len(records):
        assert time.monotonic() - began < within, "spooled records did not reach the ledger"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def writer_for(tmp_path: Path, sink: Any, **overrides: Any) -> LedgerWriter:
    options: dict[str, Any] = {
        "max_batch": 64,
        "spool_dir": tmp_path,
        "retry_seconds": 0.1,
        "sink": sink,
        "redis_url": REDIS_URL,
        "probe_seconds": PROBE,
        "shutdown_replay_seconds": 5,
    } | overrides
    return LedgerWriter(**options)


async def spooled_writer(
    tmp_path: Path, outage: Outage, records: list[dict[str, Any]], **overrides: Any
) -> LedgerWriter:
    """A writer that answered `records` while the database was down: all spooled."""
    writer = writer_for(tmp_path, outage, **overrides)
    await asyncio.gather(*(writer.write(r) for r in records))
    return writer


def test_spool_reaches_the_ledger_within_a_probe_of_the_database_returning(
    tmp_path: Path, outage: Outage, key: Any, redis_client: redis.Redis
) -> None:
    records = [record_for(key) for _ in range(3)]

    async def scenario() -> None:
        writer = await spooled_writer(tmp_path, outage, records)  # answered: spooled
        assert writer.spooled == 3
        await asyncio.sleep(PROBE * 2)
        report = redis_client.get(f"rk:spool:{writer.spool.writer_id}")
        assert report == b"3" and redis_client.ttl(f"rk:spool:{writer.spool.writer_id}") > 0
        assert redis_client.sismember("rk:spool-writers", writer.spool.writer_id)
        outage.down = False  # the database answers again; no request arrives
        elapsed = await wait_stored(records, within=PROBE + 1.0)
        assert elapsed <= PROBE + 1.0
        await asyncio.sleep(0.1)
        assert redis_client.get(f"rk:spool:{writer.spool.writer_id}") is None  # cleared
        assert not redis_client.sismember("rk:spool-writers", writer.spool.writer_id)
        assert not list(tmp_path.glob("ledger-*.jsonl"))
        await writer.close()

    asyncio.run(scenario())
    assert stored(records) == 3


def test_a_commit_after_the_outage_loads_the_spool_at_once(
    tmp_path: Path, outage: Outage, key: Any, redis_client: redis.Redis
) -> None:
    spooled = [record_for(key) for _ in range(2)]

    async def scenario() -> None:
        # no probe: only traffic
        writer = await spooled_writer(tmp_path, outage, spooled, probe_seconds=3600)
        await asyncio.sleep(0.2)
        outage.down = False
        await writer.write(record_for(key))  # the first commit that succeeds
        await wait_stored(spooled, within=1.0)
        await writer.close()

    asyncio.run(scenario())


def test_writer_start_replays_without_traffic(tmp_path: Path, redis_client: redis.Redis) -> None:
    key = ApiKeyFactory()
    records = [record_for(key) for _ in range(4)]
    spool_append(tmp_path, records)  # left by a writer that is gone

    async def scenario() -> None:
        writer = writer_for(tmp_path, default_sink(), probe_seconds=3600)
        writer.start()  # what the ASGI lifespan start-up calls
        await wait_stored(records, within=1.0)
        await writer.close()

    asyncio.run(scenario())
    assert not list(tmp_path.glob("ledger-*.jsonl"))


def test_shutdown_replays_what_was_spooled(
    tmp_path: Path, outage: Outage, key: Any, redis_client: redis.Redis
) -> None:
    records = [record_for(key) for _ in range(3)]

    async def scenario() -> None:
        writer = await spooled_writer(tmp_path, outage, records, probe_seconds=3600)
        outage.down = False  # back, but no traffic and no probe before the shutdown
        await writer.close()

    asyncio.run(scenario())
    assert stored(records) == 3
    assert not list(tmp_path.glob("ledger-*.jsonl"))
    assert not list(redis_client.scan_iter("rk:spool:*"))


def test_shutdown_keeps_and_reports_what_it_cannot_load(
    tmp_path: Path,
    outage: Outage,
    key: Any,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    settings: Any,
) -> None:
    records = [record_for(key) for _ in range(3)]

    async def scenario() -> str:
        writer = await spooled_writer(tmp_path, outage, records, shutdown_replay_seconds=0.5)
        await writer.close()  # the database is still down
        return writer.spool.writer_id

    with caplog.at_level(logging.CRITICAL, logger="metering.ledger"):
        writer_id = asyncio.run(scenario())
    assert any("NOT replayed at shutdown" in r.message for r in caplog.records)
    assert stored(records) == 0 and list(tmp_path.glob("ledger-*.jsonl"))
    assert redis_client.get(f"rk:spool:{writer_id}") == b"3"
    assert redis_client.ttl(f"rk:spool:{writer_id}") == -1  # nobody would refresh it

    outage.down = False
    settings.RECKON_LEDGER_SPOOL_DIR = tmp_path
    settings.REDIS_URL = REDIS_URL
    call_command("ledger_replay_spool")
    assert stored(records) == 3
    assert redis_client.get(f"rk:spool:{writer_id}") is None  # the close may go ahead


def test_spool_file_names_are_unique_per_host_process_and_boot(tmp_path: Path) -> None:
    """Two writers with the same pid (containers sharing a volume: each server is pid 7)
    never share a file; here both are this process."""
    key = ApiKeyFactory()
    spool_append(tmp_path, [record_for(key)])
    spool_append(tmp_path, [record_for(key)])
    files = sorted(tmp_path.glob("ledger-*.jsonl"))
    assert len(files) == 2
    host = socket.gethostname().replace(".", "-")
    for path in files:
        assert path.name.startswith(f"ledger-{host}-{os.getpid()}-")
    assert spool_replay(tmp_path) == 2


def test_a_file_a_live_writer_holds_is_left_alone_whatever_its_pid(tmp_path: Path) -> None:
    """A writer on another host sharing the volume: its pid means nothing here (none of
    ours is 999999999), but it holds its file locked, so it is not taken for dead."""
    key = ApiKeyFactory()
    records = [record_for(key)]
    other = tmp_path / "ledger-999999999.jsonl"
    spool_append(tmp_path, records)
    (written,) = tmp_path.glob("ledger-*.jsonl")
    written.rename(other)
    holder = subprocess.Popen(  # noqa: S603 - a fixed interpreter and script
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(other)!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert spool_replay(tmp_path) == 0
        assert other.exists() and stored(records) == 0
    finally:
        holder.communicate("", timeout=10)  # its writer exits: the lock goes with it
    assert spool_replay(tmp_path) == 1
    assert not other.exists() and stored(records) == 1


def test_a_record_of_a_dropped_month_is_set_aside_not_jamming_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spooled record whose month was archived and dropped cannot be inserted: it is
    set aside (logged as an ERROR), the rest of its file loads, the spool is no longer
    pending; once the month is restored, the set-aside file loads like any spool."""
    month = datetime(2024, 3, 1, tzinfo=UTC)  # before every test partition: none exists
    archive = LedgerArchive.objects.create(month=month, state="dropped", location="file:///x")
    key = ApiKeyFactory()
    late = record_for(
        key, started_at=month + timedelta(days=9), finished_at=month + timedelta(days=9)
    )
    current = [record_for(key), record_for(key)]
    spool_append(tmp_path, [current[0], late, current[1]])
    with caplog.at_level(logging.ERROR, logger="metering.ledger.spool"):
        assert spool_replay(tmp_path) == 2
        assert spool_replay(tmp_path) == 0  # nothing left to retry
    assert stored(current) == 2 and stored([late]) == 0
    assert spool.spool_pending(tmp_path) == {}
    (aside,) = tmp_path.glob("dropped-*.jsonl")
    assert str(late["request_id"]) in aside.read_text()
    assert "set aside" in caplog.text and "2024-03" in caplog.text
    # the operator restores the month and hands the file back to the replay
    partition_create(month)
    archive.state = "restored"
    archive.save()
    aside.rename(tmp_path / aside.name.replace("dropped-", "ledger-", 1))
    assert spool_replay(tmp_path) == 1 and stored([late]) == 1


def test_spool_lines_from_before_the_provider_account_stamp_still_load(tmp_path: Path) -> None:
    """A spool line written before records carried `provider_account_id` (the field
    absent) loads with no stamp, beside a line that has it; both reach the rollups."""
    key = ApiKeyFactory()
    old = record_for(key)
    old.pop("provider_account_id", None)
    new = record_for(key, provider_account_id=42)
    path = spool_append(tmp_path, [old, new])
    lines = path.read_text().splitlines()
    assert '"provider_account_id"' not in lines[0] and '"provider_account_id":42' in lines[1]
    assert spool_replay(tmp_path) == 2
    stamps = dict(UsageRecord.objects.values_list("request_id", "provider_account_id"))
    assert stamps == {old["request_id"]: None, new["request_id"]: 42}
    rollups_vs_raw_scan()  # the old line under account 0, the new one under 42
    route_targets_vs_raw_scan()
    assert not list(tmp_path.glob("ledger-*.jsonl"))


ROUTING_STAMPS = (
    "route_id",
    "attempt",
    "failed_over",
    "route_policy",
    "route_reason",
    "reasoning_effort",
)


def test_spool_lines_from_before_routing_load_with_null_stamps(tmp_path: Path) -> None:
    """A spool line written before records carried the routing stamps (decision 0117;
    none of the keys present) loads with NULL stamps under route 0 and adds nothing to
    the per-target tables; a routed line beside it keeps its stamps and folds there."""
    key = ApiKeyFactory()
    old = record_for(key)
    for name in ROUTING_STAMPS:
        old.pop(name, None)
    new = record_for(
        key,
        route_id=5,
        attempt=2,
        failed_over=False,
        route_policy="weighted",
        route_reason="failover",
        reasoning_effort="minimal",
    )
    path = spool_append(tmp_path, [old, new])
    lines = path.read_text().splitlines()
    assert not any(f'"{name}"' in lines[0] for name in ROUTING_STAMPS)
    assert spool_replay(tmp_path) == 2
    rows = {r[0]: r[1:] for r in UsageRecord.objects.values_list("request_id", *ROUTING_STAMPS)}
    assert rows == {
        old["request_id"]: (None,) * len(ROUTING_STAMPS),
        new["request_id"]: (5, 2, False, "weighted", "failover", "minimal"),
    }
    rollups = rollups_vs_raw_scan()
    assert sorted(route for (*_, route, _hour) in rollups) == [0, 5]
    (target,) = route_targets_vs_raw_scan().values()
    assert target["attempts"] == 1
    assert spool_replay(tmp_path) == 0
