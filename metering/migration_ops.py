"""Online schema operations for big tables on PostgreSQL (not atomic: CREATE INDEX
CONCURRENTLY cannot run in a transaction), each safe to repeat after an interruption, and
the usual operations on SQLite. Used by migrations 0018 and 0023 (rollup key changes)."""

import time
from typing import Any

from django.db import OperationalError, migrations, models, transaction
from django.db.migrations.operations.base import Operation


def _columns(key: models.UniqueConstraint) -> str:
    names = {"tenant": "tenant_id", "api_key": "api_key_id"}
    return ", ".join(f'"{names.get(f, f)}"' for f in key.fields)


class SwapUniqueKey(Operation):
    """Replace the rollups' unique key `old` with `new` (same name). PostgreSQL: build
    the new index concurrently, then swap in one ALTER TABLE; elsewhere the usual table
    remake."""

    reversible = True

    def __init__(self, model_name: str, old: models.UniqueConstraint, new: models.UniqueConstraint):
        self.model_name, self.old, self.new = model_name, old, new

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (
            self.__class__.__name__,
            [],
            {"model_name": self.model_name, "old": self.old, "new": self.new},
        )

    def state_forwards(self, app_label: str, state: Any) -> None:
        state.remove_constraint(app_label, self.model_name, self.old.name)
        state.add_constraint(app_label, self.model_name, self.new)

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._swap(app_label, schema_editor, to_state, self.new)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._swap(app_label, schema_editor, to_state, self.old)

    def _swap(
        self, app_label: str, schema_editor: Any, state: Any, key: models.UniqueConstraint
    ) -> None:
        model = state.apps.get_model(app_label, self.model_name)
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.add_constraint(model, key)  # SQLite: remakes the table as `state`
            return
        table = model._meta.db_table
        building = f"{key.name}_building"  # the new key's index while it is built
        schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{building}"')
        schema_editor.execute(
            f'CREATE UNIQUE INDEX CONCURRENTLY "{building}" ON "{table}" ({_columns(key)})'
        )
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute(
                f'ALTER TABLE "{table}" DROP CONSTRAINT "{key.name}",'
                f' ADD CONSTRAINT "{key.name}" UNIQUE USING INDEX "{building}"'
            )

    def describe(self) -> str:
        return f"Swap the unique key {self.old.name} of {self.model_name}"


# ADD COLUMN takes ACCESS EXCLUSIVE on the table (on a partitioned table, on every
# partition): briefly, but while it waits for a long reader every writer queues behind it.
# So it waits at most this long, and is retried after a pause (writers go on meanwhile).
ADD_COLUMN_LOCK_TIMEOUT_MS = 2000
ADD_COLUMN_ATTEMPTS = 30


class AddFieldOnce(migrations.AddField):
    """AddField that skips a column an interrupted run already added (PostgreSQL: this
    migration is not atomic there), each column in its own short transaction under
    lock_timeout, retried while the table is busy."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        column = model._meta.get_field(self.name).column
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema ="
                " current_schema() AND table_name = %s AND column_name = %s",
                [model._meta.db_table, column],
            )
            if cursor.fetchone():
                return
        for attempt in range(1, ADD_COLUMN_ATTEMPTS + 1):
            try:
                with transaction.atomic(using=connection.alias):
                    schema_editor.execute(f"SET LOCAL lock_timeout = {ADD_COLUMN_LOCK_TIMEOUT_MS}")
                    super().database_forwards(app_label, schema_editor, from_state, to_state)
                return
            except OperationalError:  # lock_timeout (55P03): the table was busy
                if attempt == ADD_COLUMN_ATTEMPTS:
                    raise
                time.sleep(min(0.5 * attempt, 5))


class AddIndexOnline(migrations.AddIndex):
    """AddIndex, built CONCURRENTLY on PostgreSQL (writers keep writing)."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        # a build an interruption left invalid is dropped and redone
        schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{self.index.name}"')
        schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
            return
        schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{self.index.name}"')


def role_grants(app_label: str, grants: dict[str, tuple[str, ...]]) -> migrations.RunPython:
    """A data migration giving each staff role (an auth Group) the `app_label`
    permissions `grants` names, reversibly: additive and idempotent, the roles' other
    permissions left as they are. Used by migrations that hand new permissions to roles
    (metering 0021, 0024): changing this changes what they did, so keep it as it is."""

    def grant(apps: Any, schema_editor: Any) -> None:
        from django.apps import apps as global_apps
        from django.contrib.auth.management import create_permissions

        create_permissions(global_apps.get_app_config(app_label), verbosity=0, apps=apps)
        group_model = apps.get_model("auth", "Group")
        permission_model = apps.get_model("auth", "Permission")
        for role, codenames in grants.items():
            group, _ = group_model.objects.get_or_create(name=role)
            permissions = permission_model.objects.filter(
                content_type__app_label=app_label, codename__in=codenames
            )
            assert permissions.count() == len(codenames), f"missing permissions for {role}"
            group.permissions.add(*permissions)

    def revoke(apps: Any, schema_editor: Any) -> None:
        group_model = apps.get_model("auth", "Group")
        for group in group_model.objects.filter(name__in=grants):
            group.permissions.remove(
                *group.permissions.filter(
                    content_type__app_label=app_label, codename__in=grants[group.name]
                )
            )

    return migrations.RunPython(grant, revoke)
