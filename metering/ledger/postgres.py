"""The ledger's PostgreSQL write path: a batch of records in ONE statement (insert, fold
into rollups, touch API keys) on async connections of the proxy's event loop."""

import asyncio
import os
from decimal import Decimal
from typing import Any

import orjson
from django.db import DatabaseError, DataError, IntegrityError

from metering.ledger.partitions import is_missing_partition
from metering.ledger.rollups import (
    folded_record_sql,
    rollup_hourly_sql,
    rollup_upsert_sql,
    target_fold_ctes,
)
from metering.usage import LEDGER_COLUMNS

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
    ("provider_account_id", "int8"),  # absent from a record (older spool lines): NULL
    # routing stamps (decision 0117), NULL when absent as above
    ("route_id", "int8"),
    ("attempt", "int2"),
    ("failed_over", "bool"),
    ("route_policy", "text"),
    ("route_reason", "text"),
    ("reasoning_effort", "text"),
    ("endpoint", "text"),
    ("stream", "bool"),
    ("status", "text"),
    ("upstream_status", "int2"),
    ("upstream_response_id", "text"),
    *((column, "int8") for column in LEDGER_COLUMNS),
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
    as it is: no client-side parsing of a statement this long on every batch). The
    records go in ($1), the rows actually inserted fold into the rollups of shard $2
    (`rollups`). With `touch`, the same statement also moves the keys' last_used_at
    ($3, $4). The records with a route id also fold into the per-target tables
    (RouteTargetHour, RouteLatencyBucket) of the same shard."""
    names = ", ".join(name for name, _ in _PG_COLUMNS)
    definitions = ", ".join(f"{name} {kind}" for name, kind in _PG_COLUMNS)
    folded = folded_record_sql()
    touched = (
        ", touched AS (UPDATE metering_apikey SET last_used_at = $3 WHERE id = ANY($4::int8[]))"
        if touch
        else ""
    )
    # Built from the constant column lists above; no input reaches the SQL text.
    return (
        "WITH inserted AS ("  # noqa: S608
        f" INSERT INTO metering_usagerecord ({names}, recorded_at)"
        f" SELECT {names}, now() FROM json_to_recordset($1::json) AS u({definitions})"
        # The partitioned ledger's unique index holds the partition key; it is global
        # because a v7 request id fixes its started_at (metering.ledger.partitions).
        " ON CONFLICT (request_id, started_at) DO NOTHING"
        f" RETURNING {folded}),"
        # Only rows actually inserted reach the rollups: a replayed batch adds nothing.
        f" hourly AS ({rollup_hourly_sql(source='inserted')}),"
        f" rolled AS ({rollup_upsert_sql(shard='$2::int2')}),"
        # the per-target statistics of the same rows (records with a route id)
        f" {target_fold_ctes(source='inserted', shard='$2::int2')}{touched}"
        # A data-modifying WITH runs to completion whether or not the result reads it; the
        # result reads none (no RETURNING rows to keep, no sub-plans to start).
        " SELECT 1"
    )


PG_INSERT_SQL = _pg_insert_sql(touch=False)
PG_INSERT_TOUCH_SQL = _pg_insert_sql(touch=True)
# What is executed: the statements as bytes, encoded once. psycopg looks a statement's
# text up (its prepared name, how often it ran) by hashing it on every execute; a str is
# encoded into new bytes each time, whose 10 KB hash is computed afresh (about 3,000
# instructions each lookup, callgrind), while these bytes keep theirs.
_PG_INSERT = PG_INSERT_SQL.encode()
_PG_INSERT_TOUCH = PG_INSERT_TOUCH_SQL.encode()


def _json_default(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact; json_to_recordset reads it back as numeric
    raise TypeError(f"cannot serialize {type(value).__name__}")


def pg_insert_statement(
    records: list[dict[str, Any]], touch_keys: list[int], shard: int = 0
) -> tuple[bytes, tuple[Any, ...]]:
    """The statement and parameters that insert `records` (and touch `touch_keys`)."""
    batch = orjson.dumps(records, default=_json_default).decode()
    if not touch_keys:
        return _PG_INSERT, (batch, shard)
    newest = max(r["finished_at"] for r in records)
    return _PG_INSERT_TOUCH, (batch, shard, newest, touch_keys)


ROLLUP_SHARDS = int(os.environ.get("RECKON_ROLLUP_SHARDS", "16"))


class PostgresLedgerSink:
    """Commits batches on a few async connections, so batches can be in flight together.

    Each connection folds into its own rollup shard, so two batches in flight never wait
    for each other's row lock on a busy (tenant, alias, hour) rollup."""

    def __init__(self, conninfo: str, *, concurrency: int = 2) -> None:
        self._conninfo = conninfo
        self.concurrency = concurrency
        # (connection, its cursor, its shard): one cursor a connection, used for every
        # batch (a cursor per execute, as `connection.execute` makes, costs its set-up
        # and a copy of the connection's adapters each time)
        self._idle: list[tuple[Any, Any, int]] = []
        self._next_shard = (os.getpid() * 7) % ROLLUP_SHARDS

    async def write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        import psycopg

        if self._idle:
            conn, cursor, shard = self._idle.pop()
        else:
            conn, cursor, shard = None, None, self._take_shard()
        try:
            # built before the connection is used: a record that cannot be encoded
            # (TypeError, which the writer splits the batch on) leaves it idle and usable
            statement = pg_insert_statement(records, touch_keys, shard)
        except BaseException:
            if conn is not None:
                self._idle.append((conn, cursor, shard))
            raise
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, cursor_factory=psycopg.AsyncRawCursor
                )
                cursor = conn.cursor()
            await cursor.execute(*statement)
        except asyncio.CancelledError:
            if conn is not None:  # cancelled mid-statement: not reused, not leaked
                await conn.close()
            raise
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if is_missing_partition(exc):
                # the database lacks the month's partition: its failure, not the
                # record's (retried, then spooled; never quarantined)
                self._idle.append((conn, cursor, shard))
                raise DatabaseError(str(exc)) from exc
            self._idle.append((conn, cursor, shard))  # the connection is fine; the data is not
            raise (DataError if isinstance(exc, psycopg.DataError) else IntegrityError)(
                str(exc)
            ) from exc
        except psycopg.Error as exc:
            if conn is not None:
                await conn.close()  # a broken connection is replaced on the next try
            raise DatabaseError(str(exc)) from exc
        self._idle.append((conn, cursor, shard))

    def _take_shard(self) -> int:
        shard = self._next_shard
        self._next_shard = (shard + 1) % ROLLUP_SHARDS
        return shard

    async def close(self) -> None:
        while self._idle:
            conn, _, _ = self._idle.pop()
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
