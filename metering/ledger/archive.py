"""Archive, retention and restore of whole ledger months (all tenants).

A month leaves the database in three steps, each safe to repeat after a crash:

1. export: the month's records, in id order, into zstd-compressed Parquet files with the
   explicit schema below (money as decimal256 at the column's own precision and scale,
   never a float; JSON columns as their text), plus a manifest beside them: row count,
   id range, token sums per class and money sums (exact decimal strings), for all records
   and for the unflagged ones, and each file's row count and sha256. A re-export
   overwrites the files.
2. verify: the files are read back FROM THE STORE; their checksums, schema and recomputed
   sums must equal the manifest, the manifest must equal the database's rows (SQL count
   and sums) and the month's hourly rollups (requests + flagged requests = rows; the
   unflagged sums = the rollups' sums). Any difference stops here and names itself.
3. drop (PostgreSQL): under a lock that holds off inserts into the month, the database's
   count and sums are checked against the verified manifest once more, then the month's
   partition is detached and dropped. Nothing unverified, and nothing whose sums differ,
   is ever dropped. The embedded SQLite ledger is not partitioned and its rows stay:
   export and verify work there, a drop is refused (decision 0114).

Rollups are never archived: invoices rate from them. `invoice_recompute` reads the raw
ledger through `metering.selectors.usage_totals(up_to_record_id=...)`, which reads a
dropped month from here (`archived_usage_rows`). A restore loads the rows back with
their ids (COPY) into a fresh partition and checks them against the manifest.
"""

import functools
import hashlib
import io
import itertools
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone

from config.errors import ApplicationError, Conflict, NotFound
from metering.calendar import month_day, month_key, month_start
from metering.ledger.archive_months import RUN_CLASS, month_lock_key, month_state_lock
from metering.ledger.archive_store import ArchiveStore, archive_store_open
from metering.ledger.partitions import (
    is_partitioned,
    partition_create,
    partition_detach_drop,
    partition_name,
    partitions_list,
)
from metering.models import LedgerArchive, UsageRecord, UsageRollup
from metering.usage import LEDGER_COLUMNS

log = logging.getLogger(__name__)

State = LedgerArchive.State
TABLE = UsageRecord._meta.db_table
SCHEMA_VERSION = 3
MONEY_COLUMNS = ("spend_usd", "serving_cost_usd", "reasoning_cost_usd")
# Money sums are written with the ledger's 24 decimals, so equal sums are equal strings.
MONEY_QUANTUM = Decimal("1e-24")
# On SQLite, money is stored as a float by the database itself (NUMERIC affinity): its
# SUM can differ from the exact sum in the last digits. PostgreSQL compares exactly.
SQLITE_MONEY_TOLERANCE = Decimal("1e-9")
ROWS_PER_FILE = 1_000_000
# Rows per Parquet row group (each with min/max statistics, so a read filtered on
# started_at skips the groups outside its window) and per batch read or written: what
# one step holds in memory.
ROW_GROUP_ROWS = 65_536
READ_BATCH_ROWS = 65_536
MANIFEST = "manifest.json"
UNFLAGGED = "[]"  # the JSON text of an empty `flags` list


class ArchiveMismatch(ApplicationError):
    """An archive disagrees with its manifest, the database or the rollups."""

    status = 409
    code = "archive_mismatch"


def _arrow_type(field: "models.Field[Any, Any]") -> pa.DataType:
    target = field.target_field if field.is_relation else field  # type: ignore[attr-defined]
    if isinstance(target, models.DecimalField):
        assert target.max_digits is not None and target.decimal_places is not None
        return pa.decimal256(target.max_digits, target.decimal_places)
    if isinstance(target, models.DateTimeField):
        return pa.timestamp("us", tz="UTC")
    if isinstance(target, models.BooleanField):
        return pa.bool_()
    if isinstance(target, models.IntegerField | models.BigAutoField | models.AutoField):
        return pa.int64()
    if isinstance(target, models.UUIDField | models.CharField | models.JSONField):
        return pa.string()  # UUIDs in their canonical text, JSON as its text
    raise TypeError(f"no archive type for {field.name} ({type(field).__name__})")


# The archive schema, one column per ledger column, in the model's field order. A new
# ledger column changes it: bump SCHEMA_VERSION and say below which columns the older
# versions lack (tests/metering/ledger/test_archive.py pins both).
FIELDS: "list[models.Field[Any, Any]]" = list(UsageRecord._meta.concrete_fields)
SCHEMA = pa.schema(
    [pa.field(f.column, _arrow_type(f), nullable=f.null) for f in FIELDS],
    metadata={"reckon.schema_version": str(SCHEMA_VERSION)},
)
COLUMNS = [f.column for f in FIELDS]
# Nullable columns each older schema version lacks: its files still verify, restore
# (those columns NULL) and read (as nulls).
# Version 3: the routing stamps (decision 0117).
ROUTING_COLUMNS = (
    "route_id",
    "attempt",
    "failed_over",
    "route_policy",
    "route_reason",
    "reasoning_effort",
)
ADDED_SINCE = {1: ("provider_account_id", *ROUTING_COLUMNS), 2: ROUTING_COLUMNS}


def schema_of_version(version: int) -> pa.Schema:
    """The schema archive files of `version` were written with (this one or an older one
    in `ADDED_SINCE`); KeyError for a version this code does not know."""
    if version == SCHEMA_VERSION:
        return SCHEMA
    lacking = ADDED_SINCE[version]
    return pa.schema(
        [field for field in SCHEMA if field.name not in lacking],
        metadata={"reckon.schema_version": str(version)},
    )


def _month_bounds(month: datetime) -> tuple[datetime, datetime]:
    start = month_start(month)
    if start != month:
        raise ValueError(f"{month} is not the first instant of a month (UTC)")
    return start, month_day(start.year, start.month + 1)


P = ParamSpec("P")
R = TypeVar("R")


def one_run_per_month(step: Callable[P, R]) -> Callable[P, R]:
    """Two runs never work on one month at once (PostgreSQL: a session advisory lock,
    re-entrant, so `ledger_month_archive` holds it across its steps); the second is
    refused with a Conflict and retries later. SQLite has one writer at a time."""

    @functools.wraps(step)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.vendor != "postgresql":
            return step(*args, **kwargs)
        month = month_start(kwargs["month"])  # type: ignore[arg-type]
        key = month_lock_key(month)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_CLASS, key])
            (locked,) = cursor.fetchone()
        if not locked:
            raise Conflict(f"{month_key(month)} is being archived or restored by another run.")
        try:
            return step(*args, **kwargs)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_CLASS, key])

    return guarded


def archive_store() -> ArchiveStore:
    """The store the settings name (see `metering.ledger.archive_store`)."""
    return archive_store_open(
        url=settings.RECKON_LEDGER_ARCHIVE_URL,
        endpoint_url=settings.RECKON_LEDGER_ARCHIVE_ENDPOINT_URL,
    )


# --- sums -------------------------------------------------------------------------------


@dataclass
class Sums:
    """Requests, token sums per class and money sums of a set of records."""

    requests: int
    tokens: dict[str, int]
    money: dict[str, Decimal]

    @classmethod
    def zero(cls) -> "Sums":
        return cls(0, dict.fromkeys(LEDGER_COLUMNS, 0), dict.fromkeys(MONEY_COLUMNS, Decimal(0)))

    def add(self, other: "Sums") -> None:
        self.requests += other.requests
        for name in LEDGER_COLUMNS:
            self.tokens[name] += other.tokens[name]
        for name in MONEY_COLUMNS:
            self.money[name] += other.money[name]

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            **self.tokens,
            **{
                name: format(value.quantize(MONEY_QUANTUM), "f")
                for name, value in self.money.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Sums":
        return cls(
            int(data["requests"]),
            {name: int(data[name]) for name in LEDGER_COLUMNS},
            {name: Decimal(data[name]) for name in MONEY_COLUMNS},
        )


def _differences(
    label: str, expected: Sums, actual: Sums, *, money_tolerance: Decimal = Decimal(0)
) -> list[str]:
    out = []
    if expected.requests != actual.requests:
        out.append(f"{label} requests: {expected.requests} != {actual.requests}")
    for name in LEDGER_COLUMNS:
        if expected.tokens[name] != actual.tokens[name]:
            out.append(f"{label} {name}: {expected.tokens[name]} != {actual.tokens[name]}")
    for name in MONEY_COLUMNS:
        if abs(expected.money[name] - actual.money[name]) > money_tolerance:
            out.append(f"{label} {name}: {expected.money[name]} != {actual.money[name]}")
    return out


def _table_sums(table: pa.Table) -> Sums:
    def total(column: str) -> Any:
        return pc.sum(table[column]).as_py() if table.num_rows else None

    return Sums(
        table.num_rows,
        {name: int(total(name) or 0) for name in LEDGER_COLUMNS},
        {name: Decimal(total(name) or 0) for name in MONEY_COLUMNS},
    )


def _table_sums_both(table: pa.Table) -> tuple[Sums, Sums]:
    """(all records, unflagged records) of an archive table."""
    summed = table.select([*LEDGER_COLUMNS, *MONEY_COLUMNS])
    unflagged = summed.filter(pc.equal(table["flags"], UNFLAGGED))
    return _table_sums(summed), _table_sums(unflagged)


def _database_sums(month: datetime) -> tuple[Sums, Sums, int | None, int | None]:
    """(all, unflagged, min id, max id) of the month's records in the database."""
    start, end = _month_bounds(month)
    records = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    if connection.vendor == "postgresql":
        unflagged = Q(flags=[])
        row = records.aggregate(
            all_requests=Count("id"),
            min_id=Min("id"),
            max_id=Max("id"),
            unflagged_requests=Count("id", filter=unflagged),
            **{f"all_{name}": Sum(name) for name in (*LEDGER_COLUMNS, *MONEY_COLUMNS)},
            **{
                f"unflagged_{name}": Sum(name, filter=unflagged)
                for name in (*LEDGER_COLUMNS, *MONEY_COLUMNS)
            },
        )

        def sums(prefix: str) -> Sums:
            return Sums(
                row[f"{prefix}requests"],
                {name: int(row[f"{prefix}{name}"] or 0) for name in LEDGER_COLUMNS},
                {name: Decimal(row[f"{prefix}{name}"] or 0) for name in MONEY_COLUMNS},
            )

        return sums("all_"), sums("unflagged_"), row["min_id"], row["max_id"]
    # SQLite: the rows as the ORM reads them (the values the export wrote), summed exactly.
    every, clean = Sums.zero(), Sums.zero()
    low: int | None = None
    high: int | None = None
    for values in records.values_list("id", "flags", *LEDGER_COLUMNS, *MONEY_COLUMNS).iterator():
        one = Sums(
            1,
            dict(zip(LEDGER_COLUMNS, values[2 : 2 + len(LEDGER_COLUMNS)], strict=True)),
            {
                name: value or Decimal(0)
                for name, value in zip(
                    MONEY_COLUMNS, values[2 + len(LEDGER_COLUMNS) :], strict=True
                )
            },
        )
        every.add(one)
        if not values[1]:
            clean.add(one)
        low = values[0] if low is None else min(low, values[0])
        high = values[0] if high is None else max(high, values[0])
    return every, clean, low, high


def _rollup_differences(month: datetime, manifest: dict[str, Any]) -> list[str]:
    """The month's hourly rollups against the manifest: every record counted once
    (requests + flagged_requests), and the unflagged sums equal the rollups' sums."""
    start, end = _month_bounds(month)
    row = UsageRollup.objects.filter(hour__gte=start, hour__lt=end).aggregate(
        rolled_requests=Sum("requests"),
        rolled_flagged=Sum("flagged_requests"),
        **{f"rolled_{name}": Sum(name) for name in (*LEDGER_COLUMNS, *MONEY_COLUMNS)},
    )
    every = Sums.from_json(manifest["sums"]["all"])
    clean = Sums.from_json(manifest["sums"]["unflagged"])
    out = []
    counted = (row["rolled_requests"] or 0) + (row["rolled_flagged"] or 0)
    if counted != every.requests:
        out.append(f"rollup requests + flagged_requests: {counted} != {every.requests} records")
    rolled = Sums(
        int(row["rolled_requests"] or 0),
        {name: int(row[f"rolled_{name}"] or 0) for name in LEDGER_COLUMNS},
        {name: Decimal(row[f"rolled_{name}"] or 0) for name in MONEY_COLUMNS},
    )
    tolerance = SQLITE_MONEY_TOLERANCE if connection.vendor == "sqlite" else Decimal(0)
    out += _differences("rollups vs unflagged", clean, rolled, money_tolerance=tolerance)
    # Rollups that also sum flagged records' tokens (`flagged_<class>`) are checked too.
    flagged_columns = {f.name for f in UsageRollup._meta.concrete_fields}
    for name in LEDGER_COLUMNS:
        if f"flagged_{name}" in flagged_columns:
            rolled_flagged = (
                UsageRollup.objects.filter(hour__gte=start, hour__lt=end).aggregate(
                    total=Sum(f"flagged_{name}")
                )["total"]
                or 0
            )
            if rolled_flagged != every.tokens[name] - clean.tokens[name]:
                out.append(
                    f"rollup flagged_{name}: {rolled_flagged} != "
                    f"{every.tokens[name] - clean.tokens[name]} in flagged records"
                )
    return out


# --- export -----------------------------------------------------------------------------


def _select_list() -> str:
    """The PostgreSQL select list of the COPY: text for UUIDs and JSON, epoch
    microseconds for times (exact: `extract` returns numeric), the rest as stored."""
    parts = []
    for field in FIELDS:
        column = field.column
        kind = SCHEMA.field(column).type
        if pa.types.is_timestamp(kind):
            parts.append(f"(extract(epoch FROM {column}) * 1000000)::int8")
        elif isinstance(field, models.JSONField | models.UUIDField) or (
            field.is_relation and isinstance(field.target_field, models.UUIDField)  # type: ignore[attr-defined]
        ):
            parts.append(f"{column}::text")
        else:
            parts.append(column)
    return ", ".join(parts)


def _csv_types() -> pa.Schema:
    """How the COPY's CSV is parsed: decimals as text (cast exactly afterwards: Arrow's CSV
    reader has no decimal256), times as integers (cast to timestamps afterwards)."""
    fields = []
    for field in SCHEMA:
        if pa.types.is_decimal(field.type):
            fields.append(pa.field(field.name, pa.string()))
        elif pa.types.is_timestamp(field.type):
            fields.append(pa.field(field.name, pa.int64()))
        else:
            fields.append(field)
    return pa.schema(fields)


def _to_schema(batch: pa.RecordBatch) -> pa.RecordBatch:
    arrays = [batch.column(i).cast(field.type) for i, field in enumerate(SCHEMA)]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


class _CopyStream(io.RawIOBase):
    """A COPY ... TO STDOUT read as a file, chunk by chunk (what Arrow's CSV reader pulls
    from): nothing of it lands on disk, and only the chunk at hand is held."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = bytes(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _batches_postgres(month: datetime) -> Iterator[pa.RecordBatch]:
    """The month's records in id order: one COPY (a server-side stream) parsed by Arrow's
    CSV reader as it arrives, in 16 MB blocks (memory: a block and its batch)."""
    start, end = _month_bounds(month)
    query = (
        f"COPY (SELECT {_select_list()} FROM {TABLE}"  # noqa: S608 (our own column names)
        " WHERE started_at >= %s AND started_at < %s ORDER BY id) TO STDOUT (FORMAT csv)"
    )
    connection.ensure_connection()
    raw = connection.connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(query, (start, end)) as copy:
        stream = io.BufferedReader(_CopyStream(iter(copy)), buffer_size=1 << 20)
        if not stream.peek(1):
            return
        reader = pa_csv.open_csv(
            stream,
            # one thread: the reader pulls from this connection, which is not shared
            read_options=pa_csv.ReadOptions(
                column_names=COLUMNS, block_size=16 << 20, use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_csv_types(),
                true_values=["t"],
                false_values=["f"],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield _to_schema(batch)


def _batches_orm(month: datetime, chunk: int = 50_000) -> Iterator[pa.RecordBatch]:
    """The month's records in id order through the ORM (SQLite): values as the ORM reads
    them, JSON written back to its text."""
    start, end = _month_bounds(month)
    attnames = [f.attname for f in FIELDS]
    rows = (
        UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
        .order_by("id")
        .values_list(*attnames)
        .iterator(chunk_size=chunk)
    )
    converters = []
    for field in FIELDS:
        if isinstance(field, models.JSONField):
            converters.append(lambda v: None if v is None else json.dumps(v))
        elif isinstance(field, models.UUIDField) or (
            field.is_relation and isinstance(field.target_field, models.UUIDField)  # type: ignore[attr-defined]
        ):
            converters.append(lambda v: None if v is None else str(v))
        else:
            converters.append(lambda v: v)
    buffer: list[tuple[Any, ...]] = []

    def flush() -> pa.RecordBatch:
        columns = list(zip(*buffer, strict=True))
        arrays = [
            pa.array([convert(v) for v in values], type=field.type)
            for convert, values, field in zip(converters, columns, SCHEMA, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)

    for row in rows:
        buffer.append(row)
        if len(buffer) >= chunk:
            yield flush()
            buffer = []
    if buffer:
        yield flush()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_files(
    month: datetime, workdir: Path, rows_per_file: int, store: ArchiveStore
) -> tuple[list[dict[str, Any]], Sums, Sums, int | None, int | None]:
    """Write the month's files, each put into the store and deleted locally as soon as
    it is complete (disk: one file), with the manifest's entries and sums."""
    batches = _batches_postgres(month) if connection.vendor == "postgresql" else _batches_orm(month)
    files: list[dict[str, Any]] = []
    every, clean = Sums.zero(), Sums.zero()
    low: int | None = None
    high: int | None = None
    writer: pq.ParquetWriter | None = None
    in_file = 0

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            path = workdir / files[-1]["name"]
            files[-1]["sha256"] = _sha256(path)
            files[-1]["bytes"] = path.stat().st_size
            store.put_file(name=f"{month_key(month)}/{path.name}", path=path)
            path.unlink()
            writer = None

    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            if writer is None:
                name = f"part-{len(files):05d}.parquet"
                writer = pq.ParquetWriter(
                    workdir / name, SCHEMA, compression="zstd", write_statistics=True
                )
                files.append({"name": name, "rows": 0})
                in_file = 0
            piece = batch.slice(offset, rows_per_file - in_file)
            offset += piece.num_rows
            in_file += piece.num_rows
            writer.write_batch(piece, row_group_size=ROW_GROUP_ROWS)
            files[-1]["rows"] += piece.num_rows
            table = pa.Table.from_batches([piece])
            a, u = _table_sums_both(table)
            every.add(a)
            clean.add(u)
            ids = pc.min_max(table["id"]).as_py()
            low = ids["min"] if low is None else min(low, ids["min"])
            high = ids["max"] if high is None else max(high, ids["max"])
            # the file's started_at range: a read of a window outside it never fetches it
            times = pc.min_max(table["started_at"]).as_py()
            entry = files[-1]
            first = times["min"].isoformat(timespec="microseconds")
            last = times["max"].isoformat(timespec="microseconds")
            if "started_at_min" not in entry or first < entry["started_at_min"]:
                entry["started_at_min"] = first
            if "started_at_max" not in entry or last > entry["started_at_max"]:
                entry["started_at_max"] = last
            if in_file >= rows_per_file:
                close()
    close()
    return files, every, clean, low, high


@one_run_per_month
def ledger_month_export(
    *, month: datetime, store: ArchiveStore | None = None, rows_per_file: int = ROWS_PER_FILE
) -> LedgerArchive:
    """Export a month of the ledger to the store (files, then the manifest) and record it
    as exported. Repeating it overwrites the files; a dropped month is refused."""
    store = store or archive_store()
    start, _ = _month_bounds(month)
    key = month_key(start)
    archive = LedgerArchive.objects.filter(month=start).first()
    if archive is not None and archive.state == State.DROPPED:
        raise Conflict(f"{key} is already archived and dropped; restore it before exporting again.")
    with tempfile.TemporaryDirectory(prefix="reckon-archive-") as tmp:
        workdir = Path(tmp)
        files, every, clean, low, high = _write_files(start, workdir, rows_per_file, store)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "month": key,
            "rows": every.requests,
            "min_id": low,
            "max_id": high,
            "sums": {"all": every.as_json(), "unflagged": clean.as_json()},
            "files": files,
            "schema": [
                {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in SCHEMA
            ],
            "exported_at": timezone.now().isoformat(),
        }
        manifest_path = workdir / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        store.put_file(name=f"{key}/{MANIFEST}", path=manifest_path)
    archive, _ = LedgerArchive.objects.update_or_create(
        month=start,
        defaults={
            "state": State.EXPORTED,
            "location": store.location,
            "manifest": manifest,
            "exported_at": timezone.now(),
            "verified_at": None,
        },
    )
    log.info("ledger month %s exported: %s rows in %s file(s)", key, every.requests, len(files))
    return archive


# --- verify -----------------------------------------------------------------------------


def _file_sums(path: Path, entry: dict[str, Any], version: int) -> tuple[Sums, Sums, list[str]]:
    """(all, unflagged, differences) of one archive file against its manifest entry:
    checksum, schema (of the manifest's `version`) and row count, the sums read batch by
    batch (memory: one batch)."""
    if _sha256(path) != entry["sha256"]:
        return Sums.zero(), Sums.zero(), [f"{entry['name']}: sha256 differs from the manifest"]
    parquet = pq.ParquetFile(path)
    if version not in (SCHEMA_VERSION, *ADDED_SINCE) or not parquet.schema_arrow.equals(
        schema_of_version(version), check_metadata=False
    ):
        return (
            Sums.zero(),
            Sums.zero(),
            [f"{entry['name']}: schema differs from version {version}"],
        )
    every, clean = Sums.zero(), Sums.zero()
    summed = ["flags", *LEDGER_COLUMNS, *MONEY_COLUMNS]
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=summed):
        a, u = _table_sums_both(pa.Table.from_batches([batch]))
        every.add(a)
        clean.add(u)
    if every.requests != entry["rows"]:
        return every, clean, [f"{entry['name']}: {every.requests} rows, manifest {entry['rows']}"]
    return every, clean, []


def _read_verified_files(
    archive: LedgerArchive,
    store: ArchiveStore,
    workdir: Path,
    each: Callable[[Path], None] | None = None,
) -> list[str]:
    """The differences found checking the archive as the store holds it, file by file
    (disk: one file): the stored manifest against the one the database keeps, each
    file's checksum, schema and row count, and the sums recomputed from the files
    against the manifest. `each(path)` is called on every file that passed its own
    checks, before it is let go (a restore loads it)."""
    manifest = archive.manifest
    key = manifest["month"]
    differences: list[str] = []
    with store.local_path(name=f"{key}/{MANIFEST}", workdir=workdir) as stored_manifest:
        if json.loads(stored_manifest.read_text()) != manifest:
            differences.append("the stored manifest differs from the one recorded at export")
    every, clean = Sums.zero(), Sums.zero()
    for entry in manifest["files"]:
        with store.local_path(name=f"{key}/{entry['name']}", workdir=workdir) as path:
            a, u, found = _file_sums(path, entry, manifest.get("schema_version", 1))
            differences += found
            every.add(a)
            clean.add(u)
            if not found and each is not None:
                each(path)
    if not differences:
        differences += _differences(
            "files vs manifest (all)", Sums.from_json(manifest["sums"]["all"]), every
        )
        differences += _differences(
            "files vs manifest (unflagged)", Sums.from_json(manifest["sums"]["unflagged"]), clean
        )
        if every.requests != manifest["rows"]:
            differences.append(f"files hold {every.requests} rows, manifest {manifest['rows']}")
    return differences


def _database_differences(month: datetime, manifest: dict[str, Any]) -> list[str]:
    every, clean, low, high = _database_sums(month)
    tolerance = SQLITE_MONEY_TOLERANCE if connection.vendor == "sqlite" else Decimal(0)
    out = _differences(
        "database vs manifest (all)",
        Sums.from_json(manifest["sums"]["all"]),
        every,
        money_tolerance=tolerance,
    )
    out += _differences(
        "database vs manifest (unflagged)",
        Sums.from_json(manifest["sums"]["unflagged"]),
        clean,
        money_tolerance=tolerance,
    )
    if (low, high) != (manifest["min_id"], manifest["max_id"]):
        out.append(
            f"database ids {low}..{high}, manifest {manifest['min_id']}..{manifest['max_id']}"
        )
    return out


def _archive_of(month: datetime) -> LedgerArchive:
    start, _ = _month_bounds(month)
    archive = LedgerArchive.objects.filter(month=start).first()
    if archive is None:
        raise NotFound(f"{month_key(start)} has no archive.")
    return archive


@one_run_per_month
def ledger_month_verify(*, month: datetime, store: ArchiveStore | None = None) -> LedgerArchive:
    """Read the month's archive back from the store and check it against its manifest,
    the database's rows and the hourly rollups; mark it verified, or raise
    ArchiveMismatch naming every difference (the state stays as it was)."""
    store = store or archive_store()
    archive = _archive_of(month)
    if archive.state == State.DROPPED:
        raise Conflict(
            f"{month_key(archive.month)} is dropped: there are no rows to verify against."
        )
    with tempfile.TemporaryDirectory(prefix="reckon-verify-") as tmp:
        differences = _read_verified_files(archive, store, Path(tmp))
    differences += _database_differences(archive.month, archive.manifest)
    differences += _rollup_differences(archive.month, archive.manifest)
    if differences:
        log.error("ledger month %s failed verification: %s", month_key(archive.month), differences)
        raise ArchiveMismatch(
            f"The archive of {month_key(archive.month)} does not match: {differences[0]}",
            {"differences": differences},
        )
    archive.state = State.VERIFIED
    archive.verified_at = timezone.now()
    archive.save(update_fields=["state", "verified_at", "updated_at"])
    return archive


# --- drop -------------------------------------------------------------------------------


@one_run_per_month
def ledger_month_drop(*, month: datetime) -> LedgerArchive:
    """Drop a verified month from the database (PostgreSQL), in two transactions:

    1. the month's partition is locked IN SHARE MODE (inserts into it wait; other months
       go on) and its count, id range and sums are checked against the verified
       manifest once more;
    2. the month's state lock is taken (a read combining database and archive holds it:
       Conflict, retried later), the parent then the partition locked (the order
       inserts take them, so no deadlock), and, finding no record with an id above the
       manifest's (every insert after step 1 takes a new, higher id: one index probe),
       the partition is detached and dropped and the month marked dropped.

    Refused for an unverified month, and on the embedded SQLite ledger."""
    archive = _archive_of(month)
    key = month_key(archive.month)
    if archive.state == State.DROPPED:
        return archive
    if archive.state != State.VERIFIED:
        raise Conflict(f"{key} is {archive.state}, not verified: it cannot be dropped.")
    if not is_partitioned():
        raise Conflict(
            f"{key} stays in the database: the embedded SQLite ledger is not partitioned and"
            " its records are never deleted (export and verify work; drop needs PostgreSQL)."
        )
    name = partition_name(archive.month)
    with transaction.atomic():
        if name in {n for _, n in partitions_list()}:
            with connection.cursor() as cursor:
                cursor.execute(f'LOCK TABLE "{name}" IN SHARE MODE')
        differences = _database_differences(archive.month, archive.manifest)
        if differences:
            raise ArchiveMismatch(
                f"{key} changed since it was verified: {differences[0]}",
                {"differences": differences},
            )
    highest = archive.manifest["max_id"]

    def nothing_newer(cursor: Any, table: str) -> None:
        cursor.execute(f'SELECT max(id) FROM "{table}"')  # noqa: S608 (our partition's name)
        (found,) = cursor.fetchone()
        if found is not None and (highest is None or found > highest):
            raise ArchiveMismatch(
                f"{key} changed since it was verified: record {found} arrived after the check"
            )

    with transaction.atomic():
        if not month_state_lock(archive.month):
            raise Conflict(f"{key} is being read across database and archive; retry later.")
        partition_detach_drop(archive.month, before_detach=nothing_newer)
        archive.state = State.DROPPED
        archive.dropped_at = timezone.now()
        archive.save(update_fields=["state", "dropped_at", "updated_at"])
    log.warning("ledger month %s dropped from the database (archived at %s)", key, archive.location)
    return archive


@one_run_per_month
def ledger_month_archive(
    *, month: datetime, drop: bool = True, store: ArchiveStore | None = None
) -> LedgerArchive:
    """Export, verify and (unless `drop` is False) drop one month: the retention step,
    resumable after a crash at any point. A month found exported is exported again (the
    files are overwritten), one found verified is verified again before its drop (the
    store may have changed since), one found dropped is left alone."""
    store = store or archive_store()
    start, _ = _month_bounds(month)
    archive = LedgerArchive.objects.filter(month=start).first()
    if archive is not None and archive.state == State.DROPPED:
        return archive
    if archive is None or archive.state != State.VERIFIED:
        ledger_month_export(month=start, store=store)
    archive = ledger_month_verify(month=start, store=store)
    if drop:
        archive = ledger_month_drop(month=start)
    return archive


# --- restore ----------------------------------------------------------------------------


def _copy_in(path: Path) -> None:
    """Load one archive file into the ledger with its ids, batch by batch (memory: one
    batch): Arrow writes the CSV that PostgreSQL's COPY reads (null unquoted, empty text
    quoted, exact decimals), straight into the COPY stream. The file's own columns are
    loaded: those an older schema version lacks stay NULL."""
    parquet = pq.ParquetFile(path)
    columns = ", ".join(parquet.schema_arrow.names)  # checked against a known schema
    connection.ensure_connection()
    raw = connection.connection
    assert raw is not None
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
                table = pa.Table.from_batches([batch])
                for index, field in enumerate(table.schema):
                    if pa.types.is_timestamp(field.type):
                        # UTC wall time plus its offset: Arrow formats this many times
                        # faster than the zoned type, and PostgreSQL reads it exactly.
                        wall = table.column(index).cast(pa.timestamp("us")).cast(pa.string())
                        table = table.set_column(
                            index,
                            field.name,
                            pc.binary_join_element_wise(wall, pa.scalar("+00"), ""),
                        )
                sink = pa.BufferOutputStream()
                pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False))
                copy.write(memoryview(sink.getvalue()))


@one_run_per_month
def ledger_month_restore(*, month: datetime, store: ArchiveStore | None = None) -> LedgerArchive:
    """Bring a dropped month back: its files are checked against the manifest, then in
    ONE transaction (holding the month's state lock) its partition is created and
    attached, its rows loaded with their ids, checked against the manifest and the month
    marked restored. Until that commits the partition is invisible to every other
    session: an insert into the month is refused as before (the writer spools it; spool
    replay sets records of a dropped month aside), so nothing lands in the month twice.
    A month whose rows are in the database is left as it is (restored already: a no-op;
    never dropped: refused)."""
    store = store or archive_store()
    archive = _archive_of(month)
    key = month_key(archive.month)
    if archive.state == State.RESTORED:
        return archive
    if archive.state != State.DROPPED:
        raise Conflict(
            f"{key} was never dropped ({archive.state}): its records are in the database."
        )
    clock = [time.perf_counter()]
    with tempfile.TemporaryDirectory(prefix="reckon-restore-") as tmp, transaction.atomic():
        if not month_state_lock(archive.month):
            raise Conflict(f"{key} is being read across database and archive; retry later.")
        partition_create(archive.month)
        clock.append(time.perf_counter())
        # each file is checked, then loaded; any difference rolls the whole month back
        differences = _read_verified_files(archive, store, Path(tmp), each=_copy_in)
        if differences:
            raise ArchiveMismatch(
                f"The archive of {key} does not match its manifest: {differences[0]}",
                {"differences": differences},
            )
        clock.append(time.perf_counter())
        differences = _database_differences(archive.month, archive.manifest)
        if differences:
            raise ArchiveMismatch(
                f"{key} restored does not match its manifest: {differences[0]}",
                {"differences": differences},
            )
        archive.state = State.RESTORED
        archive.restored_at = timezone.now()
        archive.save(update_fields=["state", "restored_at", "updated_at"])
    clock.append(time.perf_counter())
    log.info(
        "ledger month %s restored: %s rows (partition %.1f s, files checked and loaded %.1f s, rechecked %.1f s)",
        key,
        archive.manifest["rows"],
        *(b - a for a, b in itertools.pairwise(clock)),
    )
    return archive


# --- retention --------------------------------------------------------------------------


def retention_cutoff(*, as_of: datetime, months: int) -> datetime:
    """The first month kept: `months` whole months before `as_of`'s month are kept, the
    ones before them are archived."""
    current = month_start(as_of)
    return month_day(current.year, current.month - months)


def ledger_months_due(*, as_of: datetime) -> list[datetime]:
    """Months older than the retention (RECKON_LEDGER_RETENTION_MONTHS) whose partition is
    still in the database, oldest first, except months an operator restored; none when
    retention is unset (keep forever) or the ledger is not partitioned (SQLite keeps
    every record)."""
    months = settings.RECKON_LEDGER_RETENTION_MONTHS
    if months is None or not is_partitioned():
        return []
    cutoff = retention_cutoff(as_of=as_of, months=months)
    # A month an operator restored stays until they archive it again by hand.
    restored = set(
        LedgerArchive.objects.filter(state=State.RESTORED).values_list("month", flat=True)
    )
    return [month for month, _ in partitions_list() if month < cutoff and month not in restored]


# --- reads of dropped months ------------------------------------------------------------


def _archived_batches(
    month: datetime,
    *,
    start: datetime,
    end: datetime,
    columns: list[str],
    where: pc.Expression,
    store: ArchiveStore | None,
) -> Iterator[pa.RecordBatch]:
    """The `columns` of a dropped month's archived records started in [start, end) that
    match `where`, batch by batch (memory: one batch; disk: one S3 file at a time).
    Files whose started_at range (in the manifest) misses the window are not fetched;
    within a file Arrow skips the row groups whose statistics miss the filter. Each file
    fetched is checked against its manifest's sha256 first (a streaming hash: the cost
    of reading the file once): a tampered file raises ArchiveMismatch, never a wrong
    sum."""
    store = store or archive_store()
    archive = _archive_of(month)
    key = month_key(archive.month)
    zone = pa.timestamp("us", tz="UTC")
    window = (pc.field("started_at") >= pa.scalar(start, zone)) & (
        pc.field("started_at") < pa.scalar(end, zone)
    )
    with tempfile.TemporaryDirectory(prefix="reckon-read-") as tmp:
        for entry in archive.manifest["files"]:
            low, high = entry.get("started_at_min"), entry.get("started_at_max")
            if low is not None and (
                datetime.fromisoformat(high) < start or datetime.fromisoformat(low) >= end
            ):
                continue
            with store.local_path(name=f"{key}/{entry['name']}", workdir=Path(tmp)) as path:
                if _sha256(path) != entry["sha256"]:
                    raise ArchiveMismatch(
                        f"The archive of {key} does not match its manifest:"
                        f" {entry['name']}: sha256 differs from the manifest"
                    )
                dataset = ds.dataset(path, format="parquet", schema=SCHEMA)
                yield from dataset.to_batches(
                    columns=columns,
                    filter=window & where,
                    batch_size=READ_BATCH_ROWS,
                    batch_readahead=1,  # memory: about one batch, not Arrow's 16
                    fragment_readahead=1,
                )


def _summed_into(
    totals: dict[tuple[Any, ...], dict[str, Any]],
    table: pa.Table,
    keys: list[str],
    aggregates: list[tuple[str, str]],
) -> None:
    """Add one batch's per-group aggregates into `totals` (sums add; "max" keeps the
    highest; "count" adds)."""
    if table.num_rows == 0:
        return
    for row in table.group_by(keys).aggregate(aggregates).to_pylist():
        group = tuple(row[k] for k in keys)
        into = totals.setdefault(group, {})
        for column, how in aggregates:
            name = f"{column}_{how}"
            value = row[name] or 0
            into[name] = (
                max(into.get(name, 0), value) if how == "max" else into.get(name, 0) + value
            )


def archived_usage_rows(
    *,
    month: datetime,
    start: datetime,
    end: datetime,
    up_to_record_id: int,
    tenant_ids: list[uuid.UUID] | None,
    store: ArchiveStore | None = None,
) -> list[dict[str, Any]]:
    """What `metering.selectors` reads from the raw ledger, read from a dropped month's
    archive: per (tenant, alias), the token sums and highest id of unflagged records
    started in [start, end) with id <= `up_to_record_id` (see `_archived_batches`)."""
    where = (pc.field("id") <= up_to_record_id) & (pc.field("flags") == UNFLAGGED)
    if tenant_ids is not None:
        where = where & pc.field("tenant_id").isin([str(t) for t in tenant_ids])
    keys = ["tenant_id", "alias"]
    aggregates = [("id", "max"), *[(name, "sum") for name in LEDGER_COLUMNS]]
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for batch in _archived_batches(
        month,
        start=start,
        end=end,
        columns=["id", *keys, *LEDGER_COLUMNS],
        where=where,
        store=store,
    ):
        _summed_into(totals, pa.Table.from_batches([batch]), keys, aggregates)
    return [
        {
            "tenant_id": uuid.UUID(tenant),
            "alias": alias,
            "last": sums["id_max"],
            **{name: sums[f"{name}_sum"] for name in LEDGER_COLUMNS},
        }
        for (tenant, alias), sums in totals.items()
    ]


def archived_usage_grouped(
    *,
    month: datetime,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    api_key_id: int | None,
    alias: str | None,
    key: str | None,
    bucket: str | None,
    store: ArchiveStore | None = None,
) -> list[dict[str, Any]]:
    """Usage analytics' raw read, from a dropped month's archive: requests (client calls:
    attempts that failed over left out) and token sums of ONE tenant's records (flagged
    or not) started in [start, end), optionally of one
    key and alias, per `key` (a ledger column) and per `bucket` (a UTC granularity of
    started_at, as "bucket"), shaped like the database's rows (see `_archived_batches`)."""
    where = pc.field("tenant_id") == str(tenant_id)
    if api_key_id is not None:
        where = where & (pc.field("api_key_id") == api_key_id)
    if alias:
        where = where & (pc.field("alias") == alias)
    keys = [k for k in (key, "bucket" if bucket else None) if k]
    columns = sorted(
        {"failed_over", "started_at", *(k for k in keys if k != "bucket"), *LEDGER_COLUMNS}
    )
    aggregates = [("call", "sum"), *[(name, "sum") for name in LEDGER_COLUMNS]]
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for batch in _archived_batches(
        month, start=start, end=end, columns=columns, where=where, store=store
    ):
        table = pa.Table.from_batches([batch])
        # 1 per client call; 0 for an attempt that failed over (NULL: before routing)
        failed_over = pc.fill_null(table["failed_over"], False)
        table = table.append_column("call", pc.if_else(failed_over, 0, 1).cast(pa.int64()))
        if bucket is not None:
            table = table.append_column(
                "bucket", pc.floor_temporal(table["started_at"], unit=bucket)
            )
        if not keys:  # one group of everything
            table = table.append_column("all", pa.repeat(0, table.num_rows))
        _summed_into(totals, table, keys or ["all"], aggregates)
    return [
        {
            **(dict(zip(keys, group, strict=True)) if keys else {}),
            "requests": sums["call_sum"],
            **{name: sums[f"{name}_sum"] for name in LEDGER_COLUMNS},
        }
        for group, sums in totals.items()
    ]
