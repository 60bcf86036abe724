"""The usage ledger's write path: group commit for the proxy's hot path.

Every proxied request hands its record to `LedgerWriter.write()` and waits until the
transaction holding it has committed; only then does the proxy send the response's last
byte (for streams, the terminal event). Records that arrive while a transaction is in
flight wait for the next one, so concurrent requests share commits while each still
waits for its own: durability at the cost of one commit per batch, not per request.

Idempotent: records are unique per `request_id`; a batch retried after an ambiguous
failure (e.g. the connection dropped during COMMIT) skips ids already stored.

When the database stays unreachable past the retry budget, the batch is journaled to an
fsync'd spool file (one JSON object per line) and the request still completes. Spool
invariants:
- a spool file is named by its writer: host, pid and a random boot id
  (`ledger-<host>-<pid>-<boot>.jsonl`), so writers sharing a volume never share a file;
- a live writer holds its file under an exclusive flock; a file nobody holds belongs to
  a dead writer (or a failed replay) and any process may load it: lock, check it is
  still linked, insert (idempotent), unlink. Pids are never used to judge liveness;
- a writer replays at start-up, right after the first commit that succeeds following a
  spool, every RECKON_LEDGER_SPOOL_PROBE_SECONDS while any spool file exists (traffic or
  not), and at shutdown (bounded by RECKON_LEDGER_SHUTDOWN_REPLAY_SECONDS);
- while records stay unreplayed, `rk:spool:<writer>` in Redis holds their count
  (refreshed every probe, expiring after RECKON_LEDGER_SPOOL_HEARTBEAT_SECONDS; left
  without expiry by a shutdown that could not load them; deleted by whichever replay
  loads them), and `spool_guard` makes a period close refuse while any is reported or
  the local spool directory holds records, or while Redis does not answer.
`ledger_replay_spool` loads every unheld file by hand.

Rollups carry a commit-order stamp (`changed_xid`) that billing compares with a
watermark to find late usage (`metering.selectors.usage_watermark`).
"""

import asyncio
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
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
from django.db.models import BigIntegerField, F, Func
from django.db.models.functions import Greatest

from config.errors import ApplicationError
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


SPOOL_KEY_PREFIX = "rk:spool:"
# The writer ids that reported spool (a close reads these keys, not the whole keyspace).
SPOOL_WRITERS_KEY = "rk:spool-writers"


class SpoolPending(ApplicationError):
    """Usage records are spooled somewhere and not yet in the ledger (or it cannot be told
    whether they are): closing a period now could leave them off its invoice."""

    status = 409
    code = "ledger_spool_pending"


def writer_identity() -> str:
    """This process's writer id: host, pid and a random boot id, so writers of different
    containers sharing one spool volume (all of them pid 7) never share a file name."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _spool_owner(path: Path) -> str:
    """The writer id in a spool file's name: `ledger-<writer>.jsonl` (its live file) or
    `ledger-<writer>.r<n>.jsonl` (a batch of it taken out for replay)."""
    return path.name.removeprefix("ledger-").split(".")[0]


def _lock(fd: int, *, wait: bool) -> bool:
    """Take the exclusive lock of an open spool file. flock works across processes and,
    on a shared volume, across hosts (NFS maps it onto byte-range locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _read_records(fd: int) -> list[dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    records = []
    for line in b"".join(chunks).decode().splitlines():
        try:
            records.append(_decode(json.loads(line)))
        except ValueError:  # a torn last line (a crash mid-append): its caller got no answer
            logger.error("skipping a torn spool line: %r", line[:200])
    return records


class Spool:
    """One writer's spool: an append-only, fsync'd JSON-lines file it holds locked for as
    long as it lives, so no other process takes it for a dead writer's. A replay renames
    the live file aside first (appends then start a new one) and replays the renamed one;
    a file nobody holds locked belongs to a dead writer (or a replay that failed) and any
    process may take it: lock, check it is still linked, load, unlink."""

    def __init__(self, directory: Path, writer_id: str | None = None) -> None:
        self.directory = directory
        self.writer_id = writer_id or writer_identity()
        self.path = directory / f"ledger-{self.writer_id}.jsonl"
        self._fd: int | None = None  # the live file, locked
        self._rotations = 0
        self._mutex = threading.Lock()  # appends (event loop) against rotation (replayer)

    def append(self, records: list[dict[str, Any]]) -> Path:
        """Journal records durably (append + fsync) before their callers are answered."""
        payload = "".join(json.dumps(_encode(r), separators=(",", ":")) + "\n" for r in records)
        with self._mutex:
            fd = self._live_fd()
            os.write(fd, payload.encode())
            os.fsync(fd)
        return self.path

    def _live_fd(self) -> int:
        while self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            _lock(fd, wait=True)  # only a replayer checking the file holds it, briefly
            if os.fstat(fd).st_nlink == 0:  # a replayer took it while it was empty
                os.close(fd)
                continue
            self._fd = fd
        return self._fd

    def take(self) -> tuple[Path, int] | None:
        """Rename the live file aside for replay; the caller gets it still locked."""
        with self._mutex:
            if self._fd is None:
                return None
            self._rotations += 1
            taken = self.directory / f"ledger-{self.writer_id}.r{self._rotations}.jsonl"
            os.rename(self.path, taken)
            fd, self._fd = self._fd, None
        return taken, fd

    def close(self) -> None:
        """Release the live file (it stays on disk if anything is in it)."""
        with self._mutex:
            if self._fd is not None:
                if os.fstat(self._fd).st_size == 0:
                    os.unlink(self.path)
                os.close(self._fd)
                self._fd = None


def spool_append(spool_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Journal records durably to a spool file of their own (one-off writers, tests)."""
    spool = Spool(spool_dir)
    try:
        return spool.append(records)
    finally:
        spool.close()


def _replay_file(path: Path, fd: int) -> int:
    """Load one locked spool file into the ledger, then remove it; the lock is released
    either way, so a file that failed stays for the next replay (inserts are idempotent)."""
    try:
        inserted = 0
        if os.fstat(fd).st_nlink:  # not already consumed by another replayer
            records = _read_records(fd)
            for start in range(0, len(records), 500):
                inserted += usage_records_write(records[start : start + 500])
            os.unlink(path)
        return inserted
    finally:
        os.close(fd)


def spool_replay(
    spool_dir: Path, *, own: Spool | None = None, owners: set[str] | None = None
) -> int:
    """Load every spooled record into the ledger; returns rows inserted. Idempotent.

    Files other live writers hold locked are left to them; `own` (the calling writer's
    spool) has its live file renamed aside and replayed. The first database error is
    raised, the file it hit kept for the next try. `owners` collects the writer ids
    whose files were loaded (so their Redis reports can be cleared)."""
    owners = set() if owners is None else owners
    inserted = 0
    if own is not None and (taken := own.take()) is not None:
        owners.add(own.writer_id)
        inserted += _replay_file(*taken)
    if not spool_dir.exists():
        return inserted
    for path in sorted(spool_dir.glob("ledger-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # consumed meanwhile
        if not _lock(fd, wait=False):
            os.close(fd)  # its writer is alive (or another replayer has it)
            continue
        owners.add(_spool_owner(path))
        inserted += _replay_file(path, fd)
    return inserted


def spool_pending(spool_dir: Path) -> dict[str, int]:
    """Records waiting in the spool directory, per writer id (all files, locked or not)."""
    pending: dict[str, int] = {}
    if not spool_dir.exists():
        return pending
    for path in spool_dir.glob("ledger-*.jsonl"):
        try:
            count = path.read_bytes().count(b"\n")
        except FileNotFoundError:
            continue
        if count:
            owner = _spool_owner(path)
            pending[owner] = pending.get(owner, 0) + count
    return pending


def _spool_unclaimed(spool_dir: Path, own: str) -> set[str]:
    """Writer ids of spool files nobody holds locked (their writer is gone), but ours."""
    owners = set()
    for path in spool_dir.glob("ledger-*.jsonl") if spool_dir.exists() else ():
        owner = _spool_owner(path)
        if owner == own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if _lock(fd, wait=False):
                owners.add(owner)
        finally:
            os.close(fd)
    return owners


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def spool_report(
    *, spool_dir: Path, redis_url: str, writers: Iterable[str], ttl_seconds: float | None
) -> dict[str, int]:
    """Set `rk:spool:<writer>` to each writer's unreplayed record count in `spool_dir`
    (expiring after `ttl_seconds`, or never when None), delete it at zero. Returns the
    non-zero counts. A Redis failure is logged: the spool itself is what is durable."""
    pending = spool_pending(spool_dir)
    counts = {w: pending.get(w, 0) for w in writers}
    if redis_url and counts:
        import redis

        try:
            with _redis(redis_url).pipeline(transaction=False) as pipe:
                for writer, count in counts.items():
                    key = SPOOL_KEY_PREFIX + writer
                    if count == 0:
                        pipe.delete(key)
                        pipe.srem(SPOOL_WRITERS_KEY, writer)
                        continue
                    if ttl_seconds is not None:
                        pipe.set(key, count, ex=max(1, round(ttl_seconds)))
                    else:
                        pipe.set(key, count)
                    pipe.sadd(SPOOL_WRITERS_KEY, writer)  # after the count: never indexed bare
                pipe.execute()
        except redis.RedisError:
            logger.exception("could not report unreplayed ledger spool to Redis")
    return {w: n for w, n in counts.items() if n}


def spool_outstanding(*, spool_dir: Path, redis_url: str) -> dict[str, int]:
    """Unreplayed spooled records per writer id, as every writer reports them in Redis
    (`rk:spool:<writer>`, indexed in the set `rk:spool-writers`) plus what this machine's
    spool directory holds. Raises
    `SpoolPending` when Redis is configured but does not answer: it cannot be known."""
    outstanding = spool_pending(spool_dir)
    if redis_url:
        import redis

        try:
            client = _redis(redis_url)
            writers = sorted(w.decode() for w in client.smembers(SPOOL_WRITERS_KEY))
            values = client.mget([SPOOL_KEY_PREFIX + w for w in writers]) if writers else []
        except redis.RedisError as exc:
            raise SpoolPending(
                "Cannot tell whether usage is spooled outside the ledger: Redis does not"
                f" answer ({type(exc).__name__})."
            ) from exc
        for owner, value in zip(writers, values, strict=True):
            if value is not None and int(value) > 0:  # None: expired, its writer is gone
                outstanding[owner] = max(outstanding.get(owner, 0), int(value))
    return outstanding


def spool_guard(*, spool_dir: Path, redis_url: str) -> None:
    """Refuse (SpoolPending, naming the writers) while any writer has unreplayed spool."""
    outstanding = spool_outstanding(spool_dir=spool_dir, redis_url=redis_url)
    if outstanding:
        named = ", ".join(f"{w} ({n} records)" for w, n in sorted(outstanding.items()))
        raise SpoolPending(
            f"Usage records are spooled and not yet in the ledger: {named}.",
            {"writers": outstanding},
        )


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
        f" flagged_requests, {sum_names}, last_record_id, changed_xid, updated_at)"
        f" SELECT tenant_id, alias, accelerator, hour, $2::int2, requests, flagged_requests, {sum_names},"
        f" last_id, {PG_CHANGE_STAMP}, now() FROM hourly"
        " ON CONFLICT (tenant_id, alias, accelerator, hour, shard) DO UPDATE SET"
        " requests = r.requests + excluded.requests,"
        f" flagged_requests = r.flagged_requests + excluded.flagged_requests, {increments},"
        " last_record_id = greatest(r.last_record_id, excluded.last_record_id),"
        " changed_xid = excluded.changed_xid,"
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
        from django.conf import settings

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
            | _spool_unclaimed(self._spool_dir, self.spool.writer_id)
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
            "usage record %s refused by the database; stored flagged", record["request_id"]
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
