"""Reporting reads on a PostgreSQL read replica; everything else on the primary.

With `DATABASE_REPLICA_URL` set (settings: the `replica` alias), reads made inside an
explicit reporting scope (`reporting_reads()`: a context manager and a decorator) go to
the replica; every write, every read outside that scope, and every read inside a
transaction on the primary (a write path reading what it is about to write) go to
`default`. The scope lives in a ContextVar, so threads and asyncio tasks each see their
own. Without a replica, or with `RECKON_REPLICA_READS=false`, everything reads
`default`. Inside a test case's wrapping transaction (pytest-django's default) every
read is on `default` too, as inside any transaction: the replica tests are transactional
tests. Migrations run on `default` (`manage.py migrate`); a streaming replica takes
its schema from the primary and refuses DDL.

Lag: a replica answers as of a moment ago (its replay lag, usually under a second;
PostgreSQL's `pg_last_xact_replay_timestamp()` tells). Only the reporting views read
there: usage records and summaries, margin and what-if reports, invoice lists and
exports. They may miss the last moment's usage records or an invoice closed a moment
ago, never show anything that is not on the primary. Never on the replica: the proxy and
its ledger writes, spend control (budgets load from the primary), rating and the live
invoice preview, period close and invoice numbering, recompute, balances, limits, API
keys and authentication.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

REPLICA = "replica"

_reporting: ContextVar[bool] = ContextVar("reckon_reporting_reads", default=False)


@contextmanager
def reporting_reads() -> Iterator[None]:
    """Reads inside go to the replica, if one is configured (also a decorator)."""
    token = _reporting.set(True)
    try:
        yield
    finally:
        _reporting.reset(token)


def _in_write_transaction() -> bool:
    """A transaction (`atomic`) is open on the primary. Read off the connection without
    opening one. A test case's wrapping transaction counts like any other: tests of the
    routing run without it (`django_db(transaction=True)`)."""
    return connections[DEFAULT_DB_ALIAS].in_atomic_block


class ReportingRouter:
    """settings.DATABASE_ROUTERS: see the module docstring."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        if (
            _reporting.get()
            and settings.RECKON_REPLICA_READS
            and REPLICA in settings.DATABASES
            and not _in_write_transaction()
        ):
            return REPLICA
        return DEFAULT_DB_ALIAS

    def db_for_write(self, model: type, **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the replica is a copy of the primary: the same rows

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None  # `migrate` names its database; the default is the primary
