"""The usage ledger's write path: group commit for the proxy's hot path.

Every proxied request hands its record to `LedgerWriter.write()` and waits until the
transaction holding it has committed; only then does the proxy send the response's last
byte (for streams, the terminal event). Records that arrive while a transaction is in
flight wait for the next one, so concurrent requests share commits while each still
waits for its own: durability at the cost of one commit per batch, not per request.

Idempotent: records are unique per `request_id`; a batch retried after an ambiguous
failure (e.g. the connection dropped during COMMIT) skips ids already stored.

When the database stays unreachable past the retry budget, the batch is journaled to an
fsync'd spool file (one JSON object per line) and the request still completes;
`ledger_replay_spool` (also run at writer start-up) loads spooled records idempotently.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from metering.models import ApiKey, UsageRecord, UsageRollup

logger = logging.getLogger(__name__)

# A key's last_used_at is refreshed at most this often (seconds) by one server process.
LAST_USED_REFRESH_SECONDS = 60.0

_DATETIME_FIELDS = ("started_at", "finished_at")


def usage_records_write(records: list[dict[str, Any]], *, touch_keys: Iterable[int] = ()) -> int:
    """Insert records and fold them into rollups in one transaction; skip stored ids.

    Returns how many rows were inserted. `touch_keys` are API key ids whose last_used_at
    moves to the newest record's finish time in the same transaction.
    """
    records = list({r["request_id"]: r for r in reversed(records)}.values())[::-1]  # first wins
    request_ids = [r["request_id"] for r in records]
    with transaction.atomic():
        existing = set(
            UsageRecord.objects.filter(request_id__in=request_ids).values_list(
                "request_id", flat=True
            )
        )
        fresh = [UsageRecord(**r) for r in records if r["request_id"] not in existing]
        UsageRecord.objects.bulk_create(fresh)
        usage_rollups_apply(fresh)
        keys = sorted(set(touch_keys))
        if keys:
            newest = max(r["finished_at"] for r in records)
            ApiKey.objects.filter(pk__in=keys).update(last_used_at=newest)
    return len(fresh)


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


def usage_rollups_apply(rows: list[UsageRecord]) -> None:
    """Fold freshly inserted records into hourly rollups (the ORM twin of PG_INSERT_SQL)."""
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
        updated = UsageRollup.objects.filter(  # the ORM writer owns shard 0
            tenant_id=tenant_id, alias=alias, accelerator=accelerator, hour=hour, shard=0
        ).update(
            **{name: F(name) + value for name, value in totals.items()},
            last_record_id=Greatest(F("last_record_id"), last_id),
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
                **totals,
            )


_BIGINT_MAX = 2**63 - 1
_TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def sanitize_record(record: dict[str, Any]) -> dict[str, Any]:
    """Strip what PostgreSQL cannot store (NUL characters, integers beyond 64 bits)."""
    out = dict(record)
    for name, value in record.items():
        if isinstance(value, str):
            out[name] = value.replace("\x00", "")
    broken = [n for n in _TOKEN_FIELDS if not 0 <= out.get(n, 0) <= _BIGINT_MAX]
    for name in broken:
        out[name] = 0
    if broken:  # the costs came from counts that cannot be stored
        out["serving_cost_usd"] = out["reasoning_cost_usd"] = out["spend_usd"] = None
    out["raw_usage"] = None
    return out


_DECIMAL_FIELDS = ("serving_cost_usd", "reasoning_cost_usd", "spend_usd")


def _encode(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for name in _DECIMAL_FIELDS:
        if out.get(name) is not None:
            out[name] = str(out[name])
    out["request_id"] = str(record["request_id"])
    out["tenant_id"] = str(record["tenant_id"])
    for name in _DATETIME_FIELDS:
        out[name] = record[name].isoformat()
    return out


def _decode(line: dict[str, Any]) -> dict[str, Any]:
    out = dict(line)
    for name in _DECIMAL_FIELDS:
        if out.get(name) is not None:
            out[name] = Decimal(out[name])
    out["request_id"] = uuid.UUID(line["request_id"])
    out["tenant_id"] = uuid.UUID(line["tenant_id"])
    for name in _DATETIME_FIELDS:
        out[name] = datetime.fromisoformat(line[name])
    return out


def spool_append(spool_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Journal records durably to the local spool (append + fsync)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"ledger-{os.getpid()}.jsonl"
    payload = "".join(json.dumps(_encode(r), separators=(",", ":")) + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, payload.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def spool_replay(spool_dir: Path) -> int:
    """Load every spooled record into the ledger; returns rows inserted. Idempotent."""
    if not spool_dir.exists():
        return 0
    inserted = 0
    for path in sorted(spool_dir.glob("ledger-*.jsonl")):
        owner = int(path.stem.removeprefix("ledger-") or 0)
        if owner != os.getpid() and _alive(owner):
            continue  # a live writer may still append to it
        claimed = path.with_suffix(f".replaying-{os.getpid()}")
        try:
            path.rename(claimed)  # one replayer per file
        except FileNotFoundError:
            continue
        try:
            records = [
                _decode(json.loads(line)) for line in claimed.read_text().splitlines() if line
            ]
            for start in range(0, len(records), 500):
                inserted += usage_records_write(records[start : start + 500])
        except BaseException:
            claimed.rename(path)  # keep it for the next replay (inserts are idempotent)
            raise
        claimed.unlink()
    return inserted


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OrmLedgerSink:
    """Any database Django supports (the embedded SQLite default): the ORM on one thread."""

    concurrency = 1

    def __init__(self) -> None:
        # One thread, so batches always use the same (thread-local) connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, records, touch_keys)

    def _write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        try:
            usage_records_write(records, touch_keys=touch_keys)
        except DatabaseError:
            connection.close()  # replaced on the next try
            raise

    async def close(self) -> None:
        self._executor.submit(lambda: connection.close()).result()
        self._executor.shutdown(wait=True)


# PostgreSQL: the whole batch in ONE statement on an async connection of the event loop
# (autocommit: a single statement is its own transaction). The batch travels as one JSON
# document (encoded by orjson in C, expanded by json_to_recordset in the server), so the
# cost on the hot path's event loop is a few microseconds per record, and one round trip
# per batch whatever its size. The statement text never changes: psycopg prepares it once.
_PG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "uuid"),
    ("tenant_id", "uuid"),
    ("api_key_id", "int8"),
    ("alias", "text"),
    ("provider", "text"),
    ("upstream_model", "text"),
    ("accelerator", "text"),
    ("endpoint", "text"),
    ("stream", "bool"),
    ("status", "text"),
    ("upstream_status", "int2"),
    ("upstream_response_id", "text"),
    ("input_tokens", "int8"),
    ("cached_input_tokens", "int8"),
    ("cache_write_tokens", "int8"),
    ("output_tokens", "int8"),
    ("reasoning_tokens", "int8"),
    ("reasoning_source", "text"),
    ("flags", "jsonb"),
    ("raw_usage", "jsonb"),
    ("cost_rate_id", "int8"),
    ("serving_cost_usd", "numeric"),
    ("reasoning_cost_usd", "numeric"),
    ("spend_usd", "numeric"),
    ("client_disconnected", "bool"),
    ("ttft_us", "int8"),
    ("latency_us", "int8"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
)


def _pg_insert_sql(*, touch: bool) -> str:
    """The batch insert in PostgreSQL's own $n placeholders (psycopg's raw cursor sends it
    as it is: no client-side parsing of a statement this long on every batch). With
    `touch`, the same statement also moves the keys' last_used_at ($3, $4)."""
    names = ", ".join(name for name, _ in _PG_COLUMNS)
    definitions = ", ".join(f"{name} {kind}" for name, kind in _PG_COLUMNS)
    rated = "flags = '[]'::jsonb"
    sums = ", ".join(
        f"coalesce(sum({name}) FILTER (WHERE {rated}), 0) AS {name}" for name in ROLLUP_SUMS
    )
    sum_names = ", ".join(ROLLUP_SUMS)
    increments = ", ".join(f"{name} = r.{name} + excluded.{name}" for name in ROLLUP_SUMS)
    touched = (
        ", touched AS ("
        " UPDATE metering_apikey SET last_used_at = $3 WHERE id = ANY($4::int8[]) RETURNING id)"
        if touch
        else ""
    )
    # Built from the constant column lists above; no input reaches the SQL text.
    return (
        "WITH inserted AS ("  # noqa: S608
        f" INSERT INTO metering_usagerecord ({names}, recorded_at)"
        f" SELECT {names}, now() FROM json_to_recordset($1::json) AS u({definitions})"
        " ON CONFLICT (request_id) DO NOTHING"
        f" RETURNING id, tenant_id, alias, accelerator, started_at, flags, {sum_names}),"
        # Only rows actually inserted reach the rollups: a replayed batch adds nothing.
        " hourly AS ("
        " SELECT tenant_id, alias, accelerator, date_trunc('hour', started_at, 'UTC') AS hour,"
        f" count(*) FILTER (WHERE {rated}) AS requests,"
        f" count(*) FILTER (WHERE NOT {rated}) AS flagged_requests, {sums}, max(id) AS last_id"
        " FROM inserted GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4),"
        " rolled AS ("
        " INSERT INTO metering_usagerollup AS r (tenant_id, alias, accelerator, hour, shard, requests,"
        f" flagged_requests, {sum_names}, last_record_id, updated_at)"
        f" SELECT tenant_id, alias, accelerator, hour, $2::int2, requests, flagged_requests, {sum_names},"
        " last_id, now() FROM hourly ON CONFLICT (tenant_id, alias, accelerator, hour, shard) DO UPDATE SET"
        " requests = r.requests + excluded.requests,"
        f" flagged_requests = r.flagged_requests + excluded.flagged_requests, {increments},"
        " last_record_id = greatest(r.last_record_id, excluded.last_record_id),"
        f" updated_at = excluded.updated_at RETURNING 1){touched}"
        # (a data-modifying WITH runs to completion whether or not the result reads it)
        " SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM rolled)"
    )


PG_INSERT_SQL = _pg_insert_sql(touch=False)
PG_INSERT_TOUCH_SQL = _pg_insert_sql(touch=True)


def _json_default(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact; json_to_recordset reads it back as numeric
    raise TypeError(f"cannot serialize {type(value).__name__}")


def pg_insert_statement(
    records: list[dict[str, Any]], touch_keys: list[int], shard: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters that insert `records` (and touch `touch_keys`)."""
    batch = orjson.dumps(records, default=_json_default).decode()
    if not touch_keys:
        return PG_INSERT_SQL, (batch, shard)
    newest = max(r["finished_at"] for r in records)
    return PG_INSERT_TOUCH_SQL, (batch, shard, newest, touch_keys)


ROLLUP_SHARDS = int(os.environ.get("RECKON_ROLLUP_SHARDS", "16"))


class PostgresLedgerSink:
    """Commits batches on a few async connections, so batches can be in flight together.

    Each connection folds into its own rollup shard, so two batches in flight never wait
    for each other's row lock on a busy (tenant, alias, hour) rollup."""

    def __init__(self, conninfo: str, *, concurrency: int = 2) -> None:
        self._conninfo = conninfo
        self.concurrency = concurrency
        self._idle: list[tuple[Any, int]] = []
        self._next_shard = (os.getpid() * 7) % ROLLUP_SHARDS

    async def write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        import psycopg

        conn, shard = self._idle.pop() if self._idle else (None, self._take_shard())
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, cursor_factory=psycopg.AsyncRawCursor
                )
            await conn.execute(*pg_insert_statement(records, touch_keys, shard))
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            self._idle.append((conn, shard))  # the connection is fine; the data is not
            raise (DataError if isinstance(exc, psycopg.DataError) else IntegrityError)(
                str(exc)
            ) from exc
        except psycopg.Error as exc:
            if conn is not None:
                await conn.close()  # a broken connection is replaced on the next try
            raise DatabaseError(str(exc)) from exc
        self._idle.append((conn, shard))

    def _take_shard(self) -> int:
        shard = self._next_shard
        self._next_shard = (shard + 1) % ROLLUP_SHARDS
        return shard

    async def close(self) -> None:
        while self._idle:
            conn, _ = self._idle.pop()
            await conn.close()


def pg_conninfo(settings_dict: dict[str, Any]) -> str:
    from psycopg.conninfo import make_conninfo

    parts = {
        "dbname": settings_dict.get("NAME"),
        "user": settings_dict.get("USER"),
        "password": settings_dict.get("PASSWORD"),
        "host": settings_dict.get("HOST"),
        "port": settings_dict.get("PORT"),
    }
    options = {
        k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if isinstance(v, str | int)
    }
    return make_conninfo("", **{k: v for k, v in parts.items() if v}, **options)


def default_sink() -> "OrmLedgerSink | PostgresLedgerSink":
    if connection.vendor == "postgresql":
        from django.conf import settings

        return PostgresLedgerSink(
            pg_conninfo(connection.settings_dict), concurrency=settings.RECKON_LEDGER_CONNECTIONS
        )
    return OrmLedgerSink()


class LedgerWriter:
    """Group-commits usage records from one event loop."""

    def __init__(
        self,
        *,
        max_batch: int,
        spool_dir: Path,
        retry_seconds: float = 5.0,
        sink: "OrmLedgerSink | PostgresLedgerSink | None" = None,
        parallel_at: int = 1,
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
        self._spool_dirty = False
        self._last_replay = time.monotonic()

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
        loop.run_in_executor(None, self._replay_spool)

    def _replay_spool(self) -> None:
        try:
            replayed = spool_replay(self._spool_dir)
            if replayed:
                logger.warning("replayed %d spooled usage records into the ledger", replayed)
        except Exception:
            logger.exception("could not replay the ledger spool; it is kept for the next try")
        finally:
            connection.close()

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
                await self._commit(records, self._keys_due(records))
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
            if outcome is None and self._spool_dirty and time.monotonic() - self._last_replay > 30:
                # the database answers again: load what was spooled while it did not
                self._spool_dirty = False
                self._last_replay = time.monotonic()
                asyncio.get_running_loop().run_in_executor(None, self._replay_spool)

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

    async def _commit(self, records: list[dict[str, Any]], touch: list[int]) -> None:
        assert self._sink is not None
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.05
        while True:
            try:
                await self._sink.write(records, touch)
                return
            except (DataError, IntegrityError, TypeError, ValueError):
                # Something in the batch itself (not the database) is refused: split it so
                # one bad record cannot take the others down, and quarantine that record.
                if len(records) == 1:
                    await self._quarantine(records[0], touch)
                    return
                half = len(records) // 2
                await self._commit(records[:half], touch)
                await self._commit(records[half:], [])
                return
            except DatabaseError:
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        path = spool_append(self._spool_dir, records)
        self.spooled += len(records)
        self._spool_dirty = True
        logger.error(
            "ledger database unavailable: %d usage records spooled to %s", len(records), path
        )

    async def _quarantine(self, record: dict[str, Any], touch: list[int]) -> None:
        """Store a record the database refused with its payload made safe and a flag, so
        the call is still accounted for (and held back from rating) instead of lost."""
        safe = sanitize_record(record)
        safe["flags"] = [*safe.get("flags", []), "quarantined_record"]
        logger.error(
            "usage record %s refused by the database; stored flagged", record["request_id"]
        )
        assert self._sink is not None
        await self._sink.write([safe], touch)

    async def close(self) -> None:
        """Flush what is pending and stop."""
        while self._pending or self._busy:
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._sink is not None:
            await self._sink.close()
