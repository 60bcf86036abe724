"""The embedded default (SQLite), in a process of its own on a fresh database file:
migration 0014 rebuilds old rollups (and 0018 after it keeps them as they are: account 0,
model ''), and a smaller run of the property
that rollup-served usage summaries and series equal a plain aggregate of the raw records,
limits the plain sum of a tenant's or key's records, rollups a raw scan per full key, and
what reconciliation reads of a provider account its stamped records."""

from pathlib import Path

from tests.sqlite_helpers import run_on_sqlite

SCRIPT = """
import django

django.setup()
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.metering.test_migration_0014 import BEFORE, _old_world, migrate

old = migrate(BEFORE).loader.project_state(BEFORE).apps
tenant, keys, records = _old_world(old)
migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
from metering.models import UsageRollup

rows = UsageRollup.objects.filter(tenant_id=tenant.pk)
assert rows.count() == 5 and {r.shard for r in rows} == {0}, list(rows.values())
assert {r.changed_xid for r in rows} == {209, 210, 211}
assert sum(r.requests + r.flagged_requests for r in rows) == 6
assert {(r.provider_account_id, r.upstream_model) for r in rows} == {(0, "")}
# rows folded before 0018 hold no upstream model: the per-key property below is of
# records folded after it
from metering.models import UsageRecord

rows.delete()
UsageRecord.objects.filter(tenant_id=tenant.pk).delete()

from tests.metering.analytics.usage_world import (
    as_ledger_rows, assert_forwarded_as_raw, assert_limits_read_as_raw,
    assert_rollups_serve_as_raw, records, tenants_with_keys, whole_hours, windows, write_orm,
)
from tests.usage_helpers import rollups_vs_raw_scan, route_targets_vs_raw_scan


@settings(max_examples=25, deadline=None, database=None)
@given(
    drawn=records,
    window=windows(),
    alias=st.none() | st.sampled_from(["reasoner", "Thinker"]),
    key_index=st.none() | st.integers(0, 2),
    limits_since=whole_hours,
)
def rollups_serve_as_raw(drawn, window, alias, key_index, limits_since):
    world = tenants_with_keys()
    write_orm(as_ledger_rows(world, drawn))
    for tenant, keys in world:
        assert_rollups_serve_as_raw(tenant, keys, window, alias, key_index)
        assert_rollups_serve_as_raw(tenant, keys, (None, None), None, None)
        assert_limits_read_as_raw(tenant, keys, limits_since)
    rollups_vs_raw_scan()
    route_targets_vs_raw_scan()
    assert_forwarded_as_raw()


rollups_serve_as_raw()
print("ok")
"""


def test_rollup_served_usage_on_sqlite(tmp_path: Path) -> None:
    stdout = run_on_sqlite(SCRIPT, tmp_path)
    assert stdout.strip().endswith("ok")
