"""Migration 0020: one open key period per existing route that declares a provider account
or an upstream key id, from the beginning of time (valid_from NULL); none for a route
with neither. Run against the migration graph itself (back to 0019, then forward)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("metering", "0019_reconciliation_permission")]
AFTER = [("metering", "0020_upstream_key_periods")]


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.mark.django_db(transaction=True)
def test_routes_that_declare_an_account_or_a_key_get_one_open_period() -> None:
    apps = migrate(BEFORE).loader.project_state(BEFORE).apps
    try:
        account = apps.get_model("metering", "ProviderAccount").objects.create(
            name="oa", provider="openai", admin_key_env="OA_ADMIN"
        )
        route_model = apps.get_model("metering", "Route")
        for alias, linked, key_id in [
            ("both", True, "key_a"),
            ("account-only", True, ""),
            ("key-only", False, "key_k"),
            ("neither", False, ""),
        ]:
            route_model.objects.create(
                alias=alias,
                provider="openai",
                base_url="https://api.openai.com/v1",
                upstream_model="gpt-r",
                provider_account=account if linked else None,
                upstream_key_id=key_id,
            )
        apps = migrate(AFTER).loader.project_state(AFTER).apps
        periods = apps.get_model("metering", "UpstreamKeyPeriod").objects.order_by("route__alias")
        assert list(
            periods.values_list(
                "route__alias",
                "provider_account__name",
                "upstream_key_id",
                "valid_from",
                "valid_until",
            )
        ) == [
            ("account-only", "oa", "", None, None),
            ("both", "oa", "key_a", None, None),
            ("key-only", None, "key_k", None, None),
        ]
    finally:
        leaf = MigrationExecutor(connection).loader.graph.leaf_nodes()
        migrate(leaf)
