"""The ledger's monthly partitions on PostgreSQL: the one home of partition management.

On PostgreSQL, `metering_usagerecord` is partitioned by RANGE (started_at), one partition
per UTC calendar month (`metering.calendar`), named `metering_usagerecord_pYYYY_MM`
(decision 0112). There is NO default partition: a record whose month has no partition
is refused by the database (SQLSTATE 23514, "no partition of relation ... found for row",
no constraint name: `is_missing_partition`), and the writer spools it as a database
failure, never quarantines it. What keeps that from happening:
- `partitions_ensure` keeps the current month and `ahead_months` more (an hourly beat
  task, `serve`/`quickstart` at start-up);
- start-up refuses to serve unless `now + 1 month` is covered (`partitions_cover`);
- a catalog test checks that the partitions form one gapless range.

Invariants:
- A partition is created as a plain table shaped like the parent, then ATTACHed (the
  parent only takes SHARE UPDATE EXCLUSIVE: inserts go on), under `lock_timeout`,
  retried. The parent's row trigger (no UPDATE/DELETE) is cloned onto it by PostgreSQL;
  its BEFORE TRUNCATE trigger is statement-level, so each partition gets its own here.
- `partition_detach_drop` is the ONLY code path that removes ledger rows. The archive
  calls it only after exporting the month and verifying the export against the rollups;
  it detaches and drops in ONE transaction, so a detached table (which has lost the
  cloned immutability trigger) never outlives the statement.
- Partition DDL is serialized by a transaction-level advisory lock, so concurrent
  `partitions_ensure` runs (many servers starting at once) never race.

On SQLite (the embedded default) the table is not partitioned: every function here is
a no-op, `partitions_list` is empty and `partitions_cover` is True.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, OperationalError, connection, transaction

from metering.calendar import month_day, month_start

logger = logging.getLogger(__name__)

PARENT = "metering_usagerecord"
# How long a partition's DDL may wait for its lock on the parent before it gives up and
# retries (a long-running read on the parent must not queue every insert behind the DDL).
LOCK_TIMEOUT_MS = 2000
DDL_ATTEMPTS = 5
# Serializes partition DDL across processes (pg_advisory_xact_lock's key).
_ADVISORY_KEY = 0x5265636B6F6E5031  # "ReckonP1"

_BOUNDS = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")

# Statement-level triggers are not cloned onto partitions: every partition gets its own.
TRUNCATE_TRIGGER = "metering_usage_record_no_truncate"


def is_partitioned() -> bool:
    """True when the ledger table is partitioned (PostgreSQL after migration 0013)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def partition_name(month: datetime) -> str:
    """The partition holding `month` (any instant in it): metering_usagerecord_p2026_12."""
    start = month_start(month)
    return f"{PARENT}_p{start:%Y_%m}"


def _next_month(month: datetime) -> datetime:
    return month_day(month.year, month.month + 1)


def partitions_bounds() -> list[tuple[str, datetime, datetime]]:
    """(name, from, to) of every partition attached to the ledger, oldest first, as the
    catalog states them (half-open [from, to)). A DEFAULT partition (never made here) is
    not hidden: it shows with from == to == datetime.min (UTC)."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        # The bound text carries its UTC offset, whatever the session's time zone.
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(%s)",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUNDS.fullmatch(bound)
        if match is None:  # DEFAULT (or anything not a plain range): surfaced, not hidden
            lowest = datetime.min.replace(tzinfo=UTC)
            found.append((name, lowest, lowest))
            continue
        low, high = (datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())
        found.append((name, low, high))
    return sorted(found, key=lambda row: (row[1], row[0]))


def partitions_list() -> list[tuple[datetime, str]]:
    """(month, name) of every partition, oldest first; `month` is its first instant (UTC).
    Empty when the ledger is not partitioned (SQLite)."""
    return [(low, name) for name, low, _ in partitions_bounds()]


def partitions_cover(until: datetime, *, since: datetime | None = None) -> bool:
    """True when every instant in [since, until) falls in a partition (`since`: now).
    Always True when the ledger is not partitioned: every row fits the one table."""
    if not is_partitioned():
        return True
    position = since or datetime.now(UTC)
    for _, low, high in partitions_bounds():
        if low <= position < high:
            position = high
        if position >= until:
            return True
    return position >= until


def partition_create(month: datetime) -> bool:
    """Create and attach the partition of `month` (e.g. to restore an archived month).
    Idempotent: False when it already exists. No-op (False) when not partitioned."""
    if not is_partitioned():
        return False
    start = month_start(month)
    return _ddl(lambda cursor: _create(cursor, start), f"create {partition_name(start)}")


def partitions_ensure(
    *, ahead_months: int = 3, now: datetime | None = None
) -> list[tuple[datetime, str]]:
    """Make sure the current month (of `now`) and `ahead_months` after it have a partition;
    returns the (month, name) pairs created (empty when all existed or not partitioned).
    Months before the current one are never created here: a missing past month was
    archived on purpose (`partition_create` restores one)."""
    if not is_partitioned():
        return []
    first = month_start(now or datetime.now(UTC))
    months = [month_day(first.year, first.month + k) for k in range(ahead_months + 1)]
    existing = {low for low, _ in partitions_list()}
    created = []
    for month in months:
        if month not in existing and partition_create(month):
            created.append((month, partition_name(month)))
            logger.info("ledger partition %s created", partition_name(month))
    return created


# What start-up demands be covered: a server never starts less than this far from a gap.
STARTUP_LEAD = timedelta(days=31)


@dataclass(frozen=True)
class PartitionsMaintained:
    """What one `partitions_maintain` run did and found."""

    created: list[tuple[datetime, str]]
    # Partitions run without a gap over [now, end of the `ahead_months`-th month after the
    # current one); False: some insert in that span would fail for want of a partition.
    covered: bool


def partitions_maintain(*, ahead_months: int, now: datetime | None = None) -> PartitionsMaintained:
    """The beat task's service: ensure `ahead_months` ahead, then check coverage and log
    an ERROR (the operators' alert) when it is short. Idempotent."""
    now = now or datetime.now(UTC)
    before = set(partitions_list())
    try:
        partitions_ensure(ahead_months=ahead_months, now=now)
    except DatabaseError:
        # reported, then judged by what coverage there is: the next run tries again
        logger.exception("ledger partitions could not be ensured")
    created = [pair for pair in partitions_list() if pair not in before]
    first = month_start(now)
    until = month_day(first.year, first.month + ahead_months + 1)
    covered = partitions_cover(until, since=now)
    if not covered:
        logger.error(
            "ledger partitions do not cover %s to %s: usage records of the missing months"
            " will be spooled, not stored (run `manage.py ledger_partitions --ensure`)",
            now.isoformat(),
            until.isoformat(),
        )
    return PartitionsMaintained(created=created, covered=covered)


def partitions_startup_refusal(*, ahead_months: int, now: datetime | None = None) -> str | None:
    """Ensure partitions at server start; why the server must not start, or None: it
    refuses unless [now, now + STARTUP_LEAD) is covered."""
    now = now or datetime.now(UTC)
    try:
        partitions_ensure(ahead_months=ahead_months, now=now)
    except DatabaseError:
        logger.exception("ledger partitions could not be ensured at start-up")
    if partitions_cover(now + STARTUP_LEAD, since=now):
        return None
    return (
        f"the ledger's partitions do not cover {now:%Y-%m-%d} to "
        f"{now + STARTUP_LEAD:%Y-%m-%d}: records would be refused "
        "(see `manage.py ledger_partitions`)."
    )


def partition_detach_drop(
    month: datetime, *, before_detach: Callable[[Any, str], None] | None = None
) -> bool:
    """DETACH and DROP the partition of `month` in ONE transaction: its rows are gone.

    The only code path that removes ledger rows. Callers (the archive) must have exported
    the month and verified the export first. The parent is locked first (ACCESS
    EXCLUSIVE, which DETACH needs anyway), then the partition: the order an insert takes
    them, so a drop and an insert never deadlock. `before_detach(cursor, name)` runs
    under that lock (no insert can land meanwhile) and may raise to stop the drop.
    Returns False when there was no such partition (or the ledger is not partitioned)."""
    if not is_partitioned():
        return False
    name = partition_name(month)

    def detach_drop(cursor: Any) -> bool:
        if name not in {n for n, _, _ in partitions_bounds()}:
            return False
        cursor.execute(f"LOCK TABLE {PARENT} IN ACCESS EXCLUSIVE MODE")
        if before_detach is not None:
            before_detach(cursor, name)
        cursor.execute(f'ALTER TABLE {PARENT} DETACH PARTITION "{name}"')
        cursor.execute(f'DROP TABLE "{name}"')
        return True

    dropped = _ddl(detach_drop, f"detach and drop {name}")
    if dropped:
        logger.warning("ledger partition %s detached and dropped", name)
    return dropped


def partition_ddl(start: datetime) -> list[str]:
    """The statements that create and attach the partition of month `start` (shared with
    migration 0013, so there is one shape of partition)."""
    name = partition_name(start)
    low, high = start.isoformat(), _next_month(start).isoformat()
    return [
        # Defaults, NOT NULLs and CHECKs as the parent's (ATTACH demands the CHECKs);
        # ATTACH builds the partition's share of the parent's indexes itself.
        f'CREATE TABLE "{name}" (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
        " INCLUDING STORAGE)",
        f'CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON "{name}"'
        f" FOR EACH STATEMENT EXECUTE FUNCTION {TRUNCATE_TRIGGER}()",
        f"ALTER TABLE {PARENT} ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{low}') TO ('{high}')",
    ]


def _create(cursor: Any, start: datetime) -> bool:
    name = partition_name(start)
    if name in {n for n, _, _ in partitions_bounds()}:
        return False
    cursor.execute("SELECT to_regclass(%s)", [f'"{name}"'])
    if cursor.fetchone()[0] is not None:
        # a table of that name that is not attached (a detach that never dropped): never
        # guess what it holds
        raise DatabaseError(f"table {name} exists but is not a partition of {PARENT}")
    for statement in partition_ddl(start):
        cursor.execute(statement)
    return True


def _ddl(work: Any, what: str) -> bool:
    """Run `work(cursor)` in one transaction holding the partition-DDL advisory lock,
    under lock_timeout; retried with backoff while the lock on the parent is not had."""
    delay = 0.2
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_KEY])
                return bool(work(cursor))
        except OperationalError as exc:  # lock_timeout (55P03) and the like
            if attempt == DDL_ATTEMPTS:
                raise
            logger.warning("ledger partitions: %s waited too long (%s); retrying", what, exc)
            time.sleep(delay)
            delay *= 2
    return False  # unreachable


def is_missing_partition(exc: BaseException) -> bool:
    """True when `exc` (psycopg's or Django's wrapper of it) is PostgreSQL refusing a row
    for want of a partition: SQLSTATE 23514 like a CHECK, but with no constraint name. It
    is the database's failure (retry, then spool), not the record's."""
    for error in (exc, exc.__cause__):
        diag = getattr(error, "diag", None)
        if diag is not None and getattr(error, "sqlstate", None) == "23514":
            return diag.constraint_name is None
    return False
