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

import django.db.models.deletion
from django.db import migrations, models

from metering.migration_ops import AddFieldOnce, AddIndexOnline, SwapUniqueKey

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
