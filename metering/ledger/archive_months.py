"""Which ledger months are archived and dropped, and the month locks that keep a read of
a month from seeing it half in the database and half in its archive.

Light on purpose (the ORM only): the selectors, which every process loads (the proxy
too), import this, while the archive itself (`metering.ledger.archive`: pyarrow, boto3)
is loaded only by what reads or writes an archive.

Two PostgreSQL advisory locks per month, keyed (class, YYYYMM):
- the run lock (RUN_CLASS): an archive step of a month (export, verify, drop, restore)
  holds it for its whole run (`pg_try_advisory_lock`, session level); a second run is
  refused with a Conflict instead of waiting;
- the state lock (STATE_CLASS): the transaction that drops a month, or restores it,
  takes it EXCLUSIVELY (`pg_try_advisory_xact_lock`; held: Conflict, retried later),
  and a read that combines the database and the archives (`months_read_lock`) holds
  it SHARED for its transaction for every month of its window. The read waits for a
  drop or restore committing, and neither can start under it, so the read sees each
  month wholly in the database or wholly dropped, never both (counted twice) or
  neither (missed). An export or verify under way never holds a read up.
SQLite never drops a month: there is nothing to lock.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from django.db import connection, transaction

from metering.calendar import month_start
from metering.models import LedgerArchive

RUN_CLASS = 0x52434B41  # "RCKA": one archive run of a month at a time
STATE_CLASS = 0x52434B53  # "RCKS": a month's drop or restore against its readers


def month_lock_key(month: datetime) -> int:
    """The second half of a month's advisory lock key: YYYYMM of its UTC month."""
    start = month_start(month)
    return start.year * 100 + start.month


def archived_months_dropped(*, start: datetime, end: datetime) -> list[datetime]:
    """First instants of the dropped months that overlap [start, end)."""
    return list(
        LedgerArchive.objects.filter(
            state=LedgerArchive.State.DROPPED, month__gte=month_start(start), month__lt=end
        )
        .order_by("month")
        .values_list("month", flat=True)
    )


def months_dropped(instants: Iterable[datetime]) -> set[datetime]:
    """The first instants of the months, among those of `instants`, that are dropped."""
    months = {month_start(at) for at in instants}
    if not months:
        return set()
    return set(
        LedgerArchive.objects.filter(
            state=LedgerArchive.State.DROPPED, month__in=months
        ).values_list("month", flat=True)
    )


@contextmanager
def months_read_lock(*, start: datetime, end: datetime) -> Iterator[None]:
    """Hold the state lock SHARED, for one transaction, on every month overlapping
    [start, end) that has an archive (in any state: a month is only dropped once
    exported and verified, which takes far longer than a read), so reads inside see
    each month wholly in the database or wholly dropped (see the module docstring).
    No archive in the window (the usual case), or SQLite: no transaction is opened, so
    a reporting read stays on the replica."""
    if connection.vendor != "postgresql":
        yield
        return
    months = LedgerArchive.objects.filter(month__gte=month_start(start), month__lt=end)
    keys = sorted(month_lock_key(m) for m in months.values_list("month", flat=True))
    if not keys:
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        for key in keys:  # ascending, so two readers never wait on each other
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", [STATE_CLASS, key])
        yield


def month_state_lock(month: datetime) -> bool:
    """Take the month's state lock exclusively for the current transaction (PostgreSQL;
    see the module docstring); False when a read holds it. True on SQLite."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", [STATE_CLASS, month_lock_key(month)]
        )
        (locked,) = cursor.fetchone()
    return bool(locked)
