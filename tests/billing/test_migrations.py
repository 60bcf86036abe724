"""Migration 0009: invoices lose their draft state. Run against the migration graph itself
(migrated back to 0008, then forward again), on a transactional test database."""

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.usage_helpers import ensure_test_partitions

BEFORE = [("billing", "0008_usage_watermark"), ("metering", "0012_usage_watermark")]
NO_DRAFT = [("billing", "0009_invoice_no_draft")]


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.fixture
def before_no_draft():  # type: ignore[no-untyped-def]
    """The historical apps as they were before invoices lost their draft state; the
    database is migrated forward again afterwards."""
    state = migrate(BEFORE).loader.project_state(BEFORE)
    yield state.apps
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    ensure_test_partitions()  # metering 0013 rebuilt the ledger with this month's on


def _invoice(apps, status: str, number: str | None):  # type: ignore[no-untyped-def]
    tenant = apps.get_model("metering", "Tenant").objects.create(name=f"t-{status}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return apps.get_model("billing", "Invoice").objects.create(
        tenant=tenant,
        period_start=start,
        period_end=datetime(2026, 2, 1, tzinfo=UTC),
        status=status,
        number=number,
        currency="USD",
    )


@pytest.mark.django_db(transaction=True)
def test_the_migration_refuses_while_a_draft_invoice_exists(before_no_draft) -> None:  # type: ignore[no-untyped-def]
    draft = _invoice(before_no_draft, "draft", None)

    with pytest.raises(
        RuntimeError, match=rf"1 invoice\(s\) still have status 'draft' \(ids {draft.pk}\)"
    ):
        migrate(NO_DRAFT)

    invoice_model = before_no_draft.get_model("billing", "Invoice")
    assert invoice_model.objects.get(pk=draft.pk).status == "draft"
    invoice_model.objects.filter(pk=draft.pk).delete()


@pytest.mark.django_db(transaction=True)
def test_the_migration_removes_the_finalize_permission(before_no_draft) -> None:  # type: ignore[no-untyped-def]
    """The permission as migration 0006 left it, held by the finance-write group."""
    _invoice(before_no_draft, "finalized", "RK-2026-000001")
    content_type = before_no_draft.get_model("contenttypes", "ContentType").objects.get_or_create(
        app_label="billing", model="invoice"
    )[0]
    finalize = before_no_draft.get_model("auth", "Permission").objects.get_or_create(
        content_type=content_type, codename="finalize_invoice", name="Can finalize draft invoices"
    )[0]
    # The role may exist already (a flush brings the staff roles back): as 0006 left it,
    # it holds the finalize permission alone.
    group = before_no_draft.get_model("auth", "Group").objects.get_or_create(name="finance-write")[
        0
    ]
    group.permissions.set([finalize])

    apps = migrate(NO_DRAFT).loader.project_state(NO_DRAFT).apps

    assert (
        not apps.get_model("auth", "Permission")
        .objects.filter(codename="finalize_invoice")
        .exists()
    )
    assert (
        not apps.get_model("auth", "Group").objects.get(name="finance-write").permissions.exists()
    )
    assert apps.get_model("billing", "Invoice").objects.get().status == "finalized"
