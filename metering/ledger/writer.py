"""Group commit for the proxy's hot path: the public write API of the ledger.

Every proxied request hands its record to `LedgerWriter.write()` and waits until the
transaction holding it has committed; only then does the proxy send the response's last
byte (for streams, the terminal event). Records that arrive while a transaction is in
flight wait for the next one, so concurrent requests share commits while each still
waits for its own: durability at the cost of one commit per batch, not per request.

Idempotent: records are unique per `request_id`; a batch retried after an ambiguous
failure (e.g. the connection dropped during COMMIT) skips ids already stored.

When the database stays unreachable past the retry budget, the batch is journaled to
this writer's spool file (`spool`) and the request still completes. A writer replays
the spool at start-up, right after the first commit that succeeds following a spool,
every RECKON_LEDGER_SPOOL_PROBE_SECONDS while any spool file exists (traffic or not),
and at shutdown (bounded by RECKON_LEDGER_SHUTDOWN_REPLAY_SECONDS). While records stay
unreplayed it keeps their count in Redis (refreshed every probe, expiring after
RECKON_LEDGER_SPOOL_HEARTBEAT_SECONDS; left without expiry by a shutdown that could not
load them; deleted by whichever replay loads them).
"""

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection

from metering.ledger.orm import OrmLedgerSink
from metering.ledger.postgres import PostgresLedgerSink, pg_conninfo
from metering.ledger.record import started_at_of
from metering.ledger.spool import Spool, spool_replay, spool_report, spool_unclaimed
from metering.usage import LEDGER_COLUMNS

logger = logging.getLogger(__name__)

# A key's last_used_at is refreshed at most this often (seconds) by one server process.
LAST_USED_REFRESH_SECONDS = 60.0

_BIGINT_MAX = 2**63 - 1
_SMALLINT_MAX = 2**15 - 1
# The routing stamps' text columns and their widths (decision 0117): a longer one is cut.
_STAMP_WIDTHS = {"route_policy": 16, "route_reason": 64, "reasoning_effort": 16}


def sanitize_record(record: dict[str, Any]) -> dict[str, Any]:
    """Strip what PostgreSQL cannot store (NUL characters, integers beyond 64 bits,
    routing stamps beyond their columns), and give a version-7 request id back the
    `started_at` it encodes.

    Why the last: the partitioned ledger refuses a v7 id whose `started_at` disagrees
    with it (`metering.ledger.record.request_id_for`), so such a record cannot be stored
    as it is. The id is the authority (the proxy made it from the true start, and a
    retry of the call carries it): stored under the id's time, the record lands where a
    copy of it already stored would be, and counts once; the flag `started_at_mismatch`
    (besides `quarantined_record`) holds it back from rating for review."""
    out = dict(record)
    request_id = record.get("request_id")
    if request_id is not None:
        encoded = started_at_of(uuid.UUID(str(request_id)))
        if encoded is not None and encoded != record.get("started_at"):
            out["started_at"] = encoded
            out["flags"] = [*record.get("flags", []), "started_at_mismatch"]
    for name, value in record.items():
        if isinstance(value, str):
            out[name] = value.replace("\x00", "")
    # routing stamps are descriptive: one that cannot be stored is cut or dropped
    for name, width in _STAMP_WIDTHS.items():
        if isinstance(out.get(name), str):
            out[name] = out[name][:width]
    if not isinstance(out.get("attempt"), int) or not 0 <= out["attempt"] <= _SMALLINT_MAX:
        out["attempt"] = None
    if not isinstance(out.get("route_id"), int) or not 0 <= out["route_id"] <= _BIGINT_MAX:
        out["route_id"] = None
    broken = [n for n in LEDGER_COLUMNS if not 0 <= out.get(n, 0) <= _BIGINT_MAX]
    for name in broken:
        out[name] = 0
    if broken:  # the costs came from counts that cannot be stored
        out["serving_cost_usd"] = out["reasoning_cost_usd"] = out["spend_usd"] = None
    out["raw_usage"] = None
    return out


def default_sink() -> "OrmLedgerSink | PostgresLedgerSink":
    if connection.vendor == "postgresql":
        return PostgresLedgerSink(
            pg_conninfo(connection.settings_dict), concurrency=settings.RECKON_LEDGER_CONNECTIONS
        )
    return OrmLedgerSink()


class LedgerWriter:
    """Group-commits usage records from one event loop.

    Spool: a batch the database refuses past the retry budget is journaled to this
    writer's spool file and its callers are answered. The spool is replayed (on a thread
    of its own, one replay at a time) at start-up, as soon as a commit succeeds again,
    every `probe_seconds` while any spool file is in the directory (so a database that
    comes back without traffic is noticed), and at shutdown within `shutdown_replay_seconds`.
    While records stay unreplayed, the writer keeps `rk:spool:<writer id>` in Redis at
    their count (expiring `heartbeat_seconds` after the last refresh; deleted once they
    are replayed), so a period close on any machine can see them (`spool_guard`).
    """

    def __init__(
        self,
        *,
        max_batch: int,
        spool_dir: Path,
        retry_seconds: float = 5.0,
        sink: "OrmLedgerSink | PostgresLedgerSink | None" = None,
        parallel_at: int = 1,
        redis_url: str | None = None,
        probe_seconds: float | None = None,
        shutdown_replay_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self._max_batch = max_batch
        self._parallel_at = parallel_at
        self._spool_dir = spool_dir
        self._retry_seconds = retry_seconds
        self._sink = sink
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._key_touched: dict[int, float] = {}
        self._busy = 0
        self.spooled = 0
        self.spool = Spool(spool_dir)
        self._redis_url = settings.REDIS_URL if redis_url is None else redis_url
        self._probe_seconds = (
            settings.RECKON_LEDGER_SPOOL_PROBE_SECONDS if probe_seconds is None else probe_seconds
        )
        self._shutdown_replay_seconds = (
            settings.RECKON_LEDGER_SHUTDOWN_REPLAY_SECONDS
            if shutdown_replay_seconds is None
            else shutdown_replay_seconds
        )
        self._heartbeat_seconds = (
            settings.RECKON_LEDGER_SPOOL_HEARTBEAT_SECONDS
            if heartbeat_seconds is None
            else heartbeat_seconds
        )
        # One thread for replays and reports: they never overlap, and a replay asked for
        # while one runs is folded into one more run after it.
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._replay: asyncio.Future[None] | None = None
        self._replay_again = False
        self._reported: set[str] = set()  # writer ids whose Redis key we set

    def start(self) -> None:
        """Start the commit workers and replay what the spool holds, without waiting for
        traffic (the server's lifespan start-up calls it; the first write otherwise)."""
        if not self._tasks:
            self._start()

    async def write(self, record: dict[str, Any]) -> None:
        """Return once `record` is committed (or durably spooled)."""
        if not self._tasks:
            self._start()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        assert self._wakeup is not None
        self._wakeup.set()
        # Cancelling the waiter (server shutdown) does not withdraw the record: it stays
        # in the batch and is committed; only the wait is abandoned.
        await future

    def _start(self) -> None:
        if self._sink is None:
            self._sink = default_sink()
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Each worker commits one batch at a time; records arriving meanwhile form the
        # next batch. The first worker takes whatever waits; the others only a backlog
        # of `parallel_at` records or more (fewer, larger commits are cheaper).
        self._tasks = [
            loop.create_task(self._run(1 if i == 0 else self._parallel_at), name=f"ledger-{i}")
            for i in range(self._sink.concurrency)
        ]
        self._tasks.append(loop.create_task(self._probe(), name="ledger-spool-probe"))
        self._replay_soon()

    # --- spool replay ----------------------------------------------------------------

    def _spool_exists(self) -> bool:
        return self._spool_dir.exists() and any(self._spool_dir.glob("ledger-*.jsonl"))

    def _replay_soon(self) -> None:
        """Replay the spool on the spool thread; never two at once."""
        if self._replay is not None and not self._replay.done():
            self._replay_again = True  # something new may have been spooled meanwhile
            return
        self._replay_again = False
        self._replay = asyncio.get_running_loop().run_in_executor(
            self._spool_thread, self._replay_spool
        )
        self._replay.add_done_callback(self._replayed)

    def _replayed(self, _: "asyncio.Future[None]") -> None:
        if self._replay_again and self._tasks:
            self._replay_soon()

    async def _probe(self) -> None:
        """While spool exists, retry it every `probe_seconds`: the retry is the probe that
        notices the database is back even when no request arrives to commit."""
        while True:
            await asyncio.sleep(self._probe_seconds)
            if self._reported or self._spool_exists():
                if self._replay is not None and not self._replay.done():
                    # a replay hangs on an unreachable database: keep the report alive
                    asyncio.get_running_loop().run_in_executor(
                        None, lambda: self._report(expire=True)
                    )
                self._replay_soon()

    def _replay_spool(self) -> None:
        consumed: set[str] = set()
        try:
            replayed = spool_replay(self._spool_dir, own=self.spool, owners=consumed)
            if replayed:
                logger.warning("replayed %d spooled usage records into the ledger", replayed)
        except Exception:
            logger.exception("could not replay the ledger spool; it is kept for the next try")
        finally:
            connection.close()
            self._reported |= consumed  # their keys go once nothing of them is left
            self._report(expire=True)

    def _report(self, *, expire: bool) -> dict[str, int]:
        """Publish unreplayed counts: this writer's, those of dead writers' files (no live
        writer holds them locked), and those it reported before. Returns what is left."""
        writers = (
            {self.spool.writer_id}
            | spool_unclaimed(self._spool_dir, self.spool.writer_id)
            | self._reported
        )
        left = spool_report(
            spool_dir=self._spool_dir,
            redis_url=self._redis_url,
            writers=writers,
            ttl_seconds=self._heartbeat_seconds if expire else None,
        )
        self._reported = set(left)
        return left

    # --- group commit ----------------------------------------------------------------

    async def _run(self, min_batch: int) -> None:
        assert self._wakeup is not None
        while True:
            while len(self._pending) < min_batch:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            records = [record for record, _ in batch]
            self._busy += 1
            try:
                spooled = await self._commit(records, self._keys_due(records))
                outcome: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - every waiter must be released
                outcome = exc
            finally:
                self._busy -= 1
            for _, future in batch:
                if not future.done():
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
            if outcome is None and not spooled and self._reported:
                # the database answers again: load what was spooled while it did not
                self._replay_soon()

    def _keys_due(self, records: list[dict[str, Any]]) -> list[int]:
        now = time.monotonic()
        due = []
        for record in records:
            key_id = record["api_key_id"]
            last = self._key_touched.get(key_id)
            if last is None or now - last >= LAST_USED_REFRESH_SECONDS:
                self._key_touched[key_id] = now
                due.append(key_id)
        return due

    async def _commit(self, records: list[dict[str, Any]], touch: list[int]) -> bool:
        """Commit records; returns True when they were spooled instead."""
        assert self._sink is not None
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.05
        while True:
            try:
                await self._sink.write(records, touch)
                return False
            except (DataError, IntegrityError, TypeError, ValueError):
                # Something in the batch itself (not the database) is refused: split it so
                # one bad record cannot take the others down, and quarantine that record.
                # (A row with no partition for its month is the database's failure: the
                # sink raises it as a DatabaseError, below.)
                if len(records) == 1:
                    await self._quarantine(records[0], touch)
                    return False
                half = len(records) // 2
                first = await self._commit(records[:half], touch)
                return await self._commit(records[half:], []) or first
            except DatabaseError:
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        path = self.spool.append(records)
        self.spooled += len(records)
        logger.error(
            "ledger database unavailable: %d usage records spooled to %s", len(records), path
        )
        # make it visible to period closes now, not at the next probe
        self._reported.add(self.spool.writer_id)
        asyncio.get_running_loop().run_in_executor(
            self._spool_thread, lambda: self._report(expire=True)
        )
        return True

    async def _quarantine(self, record: dict[str, Any], touch: list[int]) -> None:
        """Store a record the database refused with its payload made safe and a flag, so
        the call is still accounted for (and held back from rating) instead of lost."""
        safe = sanitize_record(record)
        safe["flags"] = [*safe.get("flags", []), "quarantined_record"]
        logger.error(
            "usage record %s (started_at %s) refused by the database; stored flagged",
            record["request_id"],
            record.get("started_at"),
        )
        assert self._sink is not None
        await self._sink.write([safe], touch)

    async def close(self) -> None:
        """Flush what is pending, replay the spool within `shutdown_replay_seconds`, stop.
        What could not be replayed stays on disk, reported in Redis without expiry (the
        replay that loads it deletes the key) and logged as critical."""
        while self._pending or self._busy:
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._sink is not None:
            await self._sink.close()
        if self._reported or self._spool_exists():
            if self._replay is not None and not self._replay.done():
                await asyncio.wait([self._replay], timeout=self._shutdown_replay_seconds)
            if self._replay is None or self._replay.done():
                loop = asyncio.get_running_loop()
                self._replay = loop.run_in_executor(self._spool_thread, self._replay_spool)
                await asyncio.wait([self._replay], timeout=self._shutdown_replay_seconds)
        self.spool.close()
        left = await asyncio.to_thread(self._report, expire=False)
        if left:
            logger.critical(
                "ledger spool NOT replayed at shutdown: %s usage records stay in %s until a"
                " writer starts or `manage.py ledger_replay_spool` runs",
                left,
                self._spool_dir,
            )
        self._spool_thread.shutdown(wait=False)
