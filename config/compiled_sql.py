"""A read the ORM compiles once per process, for reads that run every few seconds.

Building and compiling a queryset costs the ORM 0.3-2 ms of CPU, often more than running
it; the caller cache's loads read a dozen of them per key every refresh period, on a
thread that holds the GIL against the proxy's event loop. `CompiledQuery` asks Django for
a queryset's SQL and column converters once (`SQLCompiler.as_sql`, `get_converters`: what
QuerySet iteration runs), then runs that SQL with the call's values in the slots where
the sentinel values stood, so the rows are what the queryset would give.

Only on PostgreSQL, where Django passes a UUID, datetime, int or str parameter to the
driver as it is (the sentinel is found by equality among the compiled parameters); on
another database (SQLite, the embedded mode) every call runs the queryset itself. The
database is the one the router names for the queryset's model at each call (the SQL is
the same on the primary and a replica), and the connection the calling thread's: nothing
of the thread that compiled the query is kept.
"""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model, QuerySet

# Sentinel values for a query's slots, one per argument (values no real query uses as a
# constant; two slots of one type need two values: `uuid_slots`, `int_slots`, ...).
# INT_SLOT is outside the int4 range: int slots are for bigint columns (ids) only, as the
# ORM drops or empties a filter of a narrower column by an out-of-range value.
UUID_SLOT = uuid.UUID("5107e11e-0000-4000-8000-5107e11e0001")
DATETIME_SLOT = datetime(1, 1, 1, 0, 0, 0, 314159, tzinfo=UTC)
INT_SLOT = -7_301_999_001
STR_SLOT = "\x00slot"


def uuid_slots(count: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=UUID_SLOT.int + i) for i in range(count)]


def datetime_slots(count: int) -> list[datetime]:
    return [DATETIME_SLOT + timedelta(seconds=i) for i in range(count)]


def int_slots(count: int) -> list[int]:
    return [INT_SLOT - i for i in range(count)]


def str_slots(count: int) -> list[str]:
    return [f"{STR_SLOT}{i}" for i in range(count)]


def model_fields(model: type[Model], *attnames: str) -> tuple[str, ...]:
    """These field attnames in `model`'s field order, the order `model.from_db` takes a
    row of some of its fields in (it ignores the order of the names it is given)."""
    fields = tuple(f.attname for f in model._meta.concrete_fields if f.attname in attnames)
    if len(fields) != len(set(attnames)):
        raise ValueError(f"not fields of {model.__name__}: {set(attnames) - set(fields)}")
    return fields


def _spellings(slot: object) -> tuple[str, ...]:
    """How a slot would read if the ORM wrote it into the SQL text."""
    if isinstance(slot, uuid.UUID):
        return (str(slot), slot.hex)
    if isinstance(slot, datetime):
        return (str(slot), slot.isoformat(), str(slot.replace(tzinfo=None)))
    return (str(slot),)


class CompiledQuery:
    """`build(*args)` (a values_list queryset) compiled once per process: `rows(*args)`
    is `list(build(*args))`. `slots` are distinct sentinel values of the arguments'
    types (above); each must reach the SQL as a parameter (one or more times), never in
    its text."""

    def __init__(self, build: Callable[..., "QuerySet[Any, tuple[Any, ...]]"], *slots: object):
        if len(set(slots)) != len(slots):
            # equal slots would take the same parameters: one argument overwriting another
            raise ValueError(f"the slots of {build!r} are not distinct: {slots!r}")
        self._build = build
        self._slots = slots
        self._compiled: tuple[str, list[Any], list[list[int]], list[Any]] | None = None
        self._model: type[Model] | None = None

    def _compile(self, using: str) -> tuple[str, list[Any], list[list[int]], list[Any]]:
        compiler = self._build(*self._slots).query.get_compiler(using=using)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet as exc:  # e.g. an int slot on a column narrower than bigint
            raise ValueError(f"{self._build!r} compiles to no query with its slots") from exc
        at: dict[object, list[int]] = {}
        for i, param in enumerate(params):
            try:
                at.setdefault(param, []).append(i)
            except TypeError:  # unhashable (a list, a dict): not a slot
                pass
        positions = [at.get(slot, []) for slot in self._slots]
        if not all(positions):
            raise ValueError(f"a slot of {self._build!r} is not a parameter of its SQL")
        if any(spelling in sql for slot in self._slots for spelling in _spellings(slot)):
            raise ValueError(f"a slot of {self._build!r} is written into its SQL text")
        converters = compiler.get_converters(
            [column for column, _, _ in compiler.select[: compiler.col_count]]
        )
        # position -> (converters, expression): no reference to the connection
        return sql, list(params), positions, list(converters.items())

    def db(self) -> str:
        """The database `rows` reads now: the one the router names for the model."""
        if self._model is None:
            self._model = self._build(*self._slots).model
        return router.db_for_read(self._model) or DEFAULT_DB_ALIAS  # as the queryset would

    def rows(self, *args: object) -> list[tuple[Any, ...]]:
        using = self.db()
        connection = connections[using]
        if connection.vendor != "postgresql":
            return list(self._build(*args))
        if self._compiled is None:
            self._compiled = self._compile(using)
        sql, params, positions, converters = self._compiled
        params = params.copy()
        for arg, at in zip(args, positions, strict=True):
            for i in at:
                params[i] = arg
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if not converters:
            return rows
        out = []
        for row in rows:
            values = list(row)
            for pos, (functions, expression) in converters:
                value = values[pos]
                for function in functions:
                    value = function(value, expression, connection)
                values[pos] = value
            out.append(tuple(values))
        return out

    def first(self, *args: object) -> tuple[Any, ...] | None:
        """The first row (the queryset should be ordered and sliced [:1])."""
        rows = self.rows(*args)
        return rows[0] if rows else None
