"""Moving the test database along the migration graph, for the tests of one migration:
back to the state before it, then forward to the leaves again."""

from collections.abc import Iterator

from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

Targets = list[tuple[str, str]]


def migrate(targets: Targets) -> MigrationExecutor:
    """Migrate to `targets` (either direction); a fresh executor that sees the result."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def leaf() -> Targets:
    """The newest migration of every app."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def apps_before(targets: Targets) -> Iterator[Apps]:
    """For a fixture: the models as of `targets`, then the leaves again afterwards."""
    yield migrate(targets).loader.project_state(targets).apps
    migrate(leaf())
