"""Migration 0029: the tables the ledger's batch statement folds into keep free room in
their pages (fillfactor) on PostgreSQL, and the reverse gives the default back. Run
against the migration graph itself (back to 0028, then forward)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from metering.models import RouteLatencyBucket, RouteTargetHour, UsageRollup

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="storage parameters: PostgreSQL"
)

BEFORE = [("metering", "0028_uuid7_started_at_plpgsql")]
TABLES = [model._meta.db_table for model in (UsageRollup, RouteTargetHour, RouteLatencyBucket)]


def fillfactors() -> dict[str, str | None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, (SELECT option_value FROM pg_options_to_table(reloptions)"
            " WHERE option_name = 'fillfactor') FROM pg_class WHERE relname = ANY(%s)",
            [TABLES],
        )
        return dict(cursor.fetchall())


def migrate(targets: list[tuple[str, str]] | None = None) -> None:
    """To `targets`, or (None) forward to the latest migration of every app: the schema
    the rest of the session expects, whatever came after 0029."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes() if targets is None else targets)


@pytest.mark.django_db
def test_fold_tables_keep_room_for_hot_updates() -> None:
    assert fillfactors() == {
        "metering_usagerollup": "50",
        "metering_routetargethour": "30",
        "metering_routelatencybucket": "30",
    }


@pytest.mark.django_db(transaction=True)
def test_the_reverse_gives_the_default_back() -> None:
    migrate(BEFORE)
    try:
        assert fillfactors() == dict.fromkeys(TABLES)
    finally:
        migrate()
    assert set(fillfactors().values()) == {"50", "30"}
