"""`AddFieldOnce` on PostgreSQL: a busy table makes it wait at most its lock_timeout, let
the writers go on, and try again; it never leaves a half-added column."""

import threading
import time
from types import SimpleNamespace

import psycopg
import pytest
from django.db import OperationalError, connection, models
from django.db.migrations.state import ModelState, ProjectState

from metering import migration_ops
from metering.migration_ops import AddFieldOnce

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="lock_timeout: PostgreSQL"),
    pytest.mark.django_db(transaction=True),
]

TABLE = "scratch_add_field_once"


def _states() -> tuple[ProjectState, ProjectState, AddFieldOnce]:
    before = ProjectState()
    before.add_model(
        ModelState(
            "metering",
            "ScratchAddField",
            [("id", models.AutoField(primary_key=True))],
            options={"db_table": TABLE},
        )
    )
    operation = AddFieldOnce("scratchaddfield", "extra", models.IntegerField(null=True))
    after = before.clone()
    operation.state_forwards("metering", after)
    return before, after, operation


def _hold_lock(seconds: float, started: threading.Event) -> None:
    """Another session reads the table and keeps its lock for `seconds`."""
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}) as other:
        other.execute(f"LOCK TABLE {TABLE} IN ACCESS SHARE MODE")
        started.set()
        time.sleep(seconds)


def _columns() -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, TABLE)}


@pytest.fixture
def scratch():  # type: ignore[no-untyped-def]
    before, after, operation = _states()
    with connection.schema_editor() as editor:
        editor.create_model(before.apps.get_model("metering", "ScratchAddField"))
    yield before, after, operation
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def test_a_busy_table_is_waited_for_within_the_lock_timeout_and_retried(  # type: ignore[no-untyped-def]
    scratch, monkeypatch
) -> None:
    before, after, operation = scratch
    monkeypatch.setattr(migration_ops, "ADD_COLUMN_LOCK_TIMEOUT_MS", 100)
    pauses: list[float] = []
    # the module's pauses are recorded and shortened (not the time module's: the lock
    # holder's own sleep must stay real)
    monkeypatch.setattr(
        migration_ops, "time", SimpleNamespace(sleep=lambda s: (pauses.append(s), time.sleep(0.2)))
    )
    started = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(1.5, started))
    holder.start()
    started.wait(10)
    with connection.schema_editor(atomic=False) as editor:
        operation.database_forwards("metering", editor, before, after)
    holder.join()
    assert "extra" in _columns()
    assert pauses, "the first try should have timed out behind the other session's lock"
    # a second run (an interrupted migrate, re-run) skips the column it finds
    with connection.schema_editor(atomic=False) as editor:
        operation.database_forwards("metering", editor, before, after)


def test_a_table_busy_past_every_attempt_fails_cleanly(scratch, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before, after, operation = scratch
    monkeypatch.setattr(migration_ops, "ADD_COLUMN_LOCK_TIMEOUT_MS", 50)
    monkeypatch.setattr(migration_ops, "ADD_COLUMN_ATTEMPTS", 2)
    monkeypatch.setattr(migration_ops, "time", SimpleNamespace(sleep=lambda s: None))
    started = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(1.0, started))
    holder.start()
    started.wait(10)
    with pytest.raises(OperationalError), connection.schema_editor(atomic=False) as editor:
        operation.database_forwards("metering", editor, before, after)
    holder.join()
    assert "extra" not in _columns()
