"""One run at a time per provider account (decision 0116; review S5).

A sync (import read + apply + reconcile) and a manual import of one account hold the
account's PostgreSQL advisory lock, session level, for their whole run, so a run that read
the report first can never apply its (then stale) read after a later run, nor reconcile on
it. The lock is tried, never waited for: the hourly sync skips the account (the next hourly
run catches up), a manual import fails with a Conflict saying so.

Invariants:
- key (ACCOUNT_CLASS, account pk): no other lock in Reckon uses this class;
- re-entrant within one connection (PostgreSQL counts session locks), so an import inside
  a sync holding the lock proceeds; each take is released exactly once, also on error;
- a connection that dies releases its locks (PostgreSQL), so a killed worker never leaves
  an account locked;
- SQLite (the embedded mode, one process) takes no lock.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

ACCOUNT_CLASS = 0x52434B50  # "RCKP": one import or sync of a provider account at a time


@contextmanager
def account_run_lock(*, account_id: int) -> Iterator[bool]:
    """Try the account's run lock; yields whether this run holds it (True on SQLite).
    A caller that gets False must not read or write the account's reports."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ACCOUNT_CLASS, account_id])
        (locked,) = cursor.fetchone()
    if not locked:
        yield False
        return
    try:
        yield True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ACCOUNT_CLASS, account_id])
