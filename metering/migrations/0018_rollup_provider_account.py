"""Usage records carry the provider account stamp; rollups gain the provider account and
upstream model in their row key and the `unanswered_requests` sum (reconciliation,
decision 0116). Schema only: no existing rollup is rebuilt.

Existing rows keep provider account 0, upstream model '' and no unanswered requests.
They could never be reconciled anyway: no record served before this migration carries a
provider account stamp, so a rebuild would give every row account 0 too. Reconciliation
starts with the records served after it. Readers that sum across the provider account
and upstream model (rating, analytics, limits, archive checks) see the same sums as
before; reconciliation reads accounts > 0 only, so it never sees these rows.

Fast on a big ledger (PostgreSQL):
- the new columns have constant defaults: since PostgreSQL 11 ADD COLUMN with a constant
  default is a catalog change, with no table rewrite (instant, whatever the size);
- the new unique key and the account index are built with CREATE INDEX CONCURRENTLY
  (a scan, but writers keep writing), then the old unique constraint is swapped for
  the new one in one short ALTER TABLE (ADD CONSTRAINT ... USING INDEX: no rebuild).
  The ledger's writers find a unique key to fold on at every moment.
So the migration is not atomic on PostgreSQL (CONCURRENTLY cannot run in a
transaction). Every step is safe to repeat after an interruption (a re-run of
`migrate` completes it): a column already added is skipped, an index left behind is
dropped and rebuilt, and the swap is one statement. On SQLite (the embedded default,
small) the table is remade as usual.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models, transaction
from django.db.migrations.operations.base import Operation

TABLE = "metering_usagerollup"
OLD_KEY = models.UniqueConstraint(
    fields=("tenant", "alias", "accelerator", "api_key", "hour", "shard"),
    name="rollup_unique_hour",
)
NEW_KEY = models.UniqueConstraint(
    fields=(
        "tenant",
        "alias",
        "accelerator",
        "api_key",
        "provider_account_id",
        "upstream_model",
        "hour",
        "shard",
    ),
    name="rollup_unique_hour",
)
BUILDING = "rollup_unique_hour_0018"  # the new key's index while it is built


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
        schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{BUILDING}"')
        schema_editor.execute(
            f'CREATE UNIQUE INDEX CONCURRENTLY "{BUILDING}" ON "{TABLE}" ({_columns(key)})'
        )
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute(
                f'ALTER TABLE "{TABLE}" DROP CONSTRAINT "{key.name}",'
                f' ADD CONSTRAINT "{key.name}" UNIQUE USING INDEX "{BUILDING}"'
            )

    def describe(self) -> str:
        return f"Swap the unique key {self.old.name} of {self.model_name}"


class AddFieldOnce(migrations.AddField):
    """AddField that skips a column an interrupted run already added (PostgreSQL: this
    migration is not atomic there)."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        if connection.vendor == "postgresql":
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
        super().database_forwards(app_label, schema_editor, from_state, to_state)


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


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY (PostgreSQL): see the module docstring

    dependencies = [
        ("metering", "0016_provider_reports"),
    ]

    operations = [
        AddFieldOnce(
            model_name="usagerecord",
            name="provider_account",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="metering.provideraccount",
            ),
        ),
        AddFieldOnce(
            model_name="usagerollup",
            name="provider_account_id",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        AddFieldOnce(
            model_name="usagerollup",
            name="unanswered_requests",
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        AddFieldOnce(
            model_name="usagerollup",
            name="upstream_model",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        AddIndexOnline(
            model_name="usagerollup",
            index=models.Index(
                condition=models.Q(("provider_account_id__gt", 0)),
                fields=["provider_account_id", "hour"],
                name="rollup_account_hour",
            ),
        ),
        SwapUniqueKey(model_name="usagerollup", old=OLD_KEY, new=NEW_KEY),
    ]
