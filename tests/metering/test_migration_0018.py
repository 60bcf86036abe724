"""Migration 0018, schema only: existing rollups are kept exactly as they were (provider
account 0, upstream model '', no unanswered requests), the unique key now includes the
account and the model, the account index exists, and an index an interrupted run left
behind does not stop a second run. Run against the migration graph itself (back to
0016, then forward: both directions)."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from tests.migration_helpers import apps_before, leaf, migrate

BEFORE = [("metering", "0016_provider_reports")]
HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)
DROPPED = datetime(2026, 8, 1, tzinfo=UTC)  # archived and dropped: rollups, no records


@pytest.fixture
def old_apps():  # type: ignore[no-untyped-def]
    yield from apps_before(BEFORE)


def _old_world(apps):  # type: ignore[no-untyped-def]
    """Records of two keys in two hours (one flagged, one upstream error, one failed),
    old rollups per (tenant, alias, accelerator, key, hour) split over shards 0 and 3
    that agree with them, and the rollup of a dropped month's hour."""
    tenant = apps.get_model("metering", "Tenant").objects.create(name="acme")
    key_model = apps.get_model("metering", "ApiKey")
    keys = [
        key_model.objects.create(tenant=tenant, prefix=f"rk_{i}", key_hash=uuid.uuid4().hex)
        for i in range(2)
    ]
    record_model = apps.get_model("metering", "UsageRecord")
    statuses = ["completed", "upstream_error", "completed", "failed", "incomplete", "completed"]
    records = []
    for i in range(6):
        at = HOUR + timedelta(minutes=25 * i)  # 09:00, 09:25, 09:50, 10:15, 10:40, 11:05
        records.append(
            record_model.objects.create(
                request_id=uuid.uuid4(),
                tenant=tenant,
                api_key=keys[i % 2],
                alias="reasoner",
                provider="openai",
                upstream_model="gpt-5" if i < 4 else "gpt-5-mini",
                endpoint="chat.completions",
                status=statuses[i],
                input_tokens=10 * (i + 1),
                reasoning_tokens=i,
                spend_usd=Decimal("0.000000000000000000000001") * (i + 1),
                flags=["total_mismatch"] if i == 2 else [],
                started_at=at,
                finished_at=at,
            )
        )
    rollup_model = apps.get_model("metering", "UsageRollup")
    stamp = 100
    for record in records:
        hour = record.started_at.replace(minute=0)
        flagged = bool(record.flags)
        row, _ = rollup_model.objects.get_or_create(
            tenant=tenant,
            alias="reasoner",
            accelerator="",
            api_key=record.api_key,
            hour=hour,
            shard=3 if record.pk % 2 else 0,
        )
        prefix = "flagged_" if flagged else ""
        row.requests += 0 if flagged else 1
        row.flagged_requests += 1 if flagged else 0
        for name in ("input_tokens", "reasoning_tokens", "spend_usd"):
            setattr(row, prefix + name, getattr(row, prefix + name) + getattr(record, name))
        row.last_record_id = max(row.last_record_id, record.pk)
        stamp += 1
        row.changed_xid = stamp + 10 * hour.hour
        row.save()
    apps.get_model("metering", "LedgerArchive").objects.create(
        month=DROPPED, state="dropped", location="file:///archive"
    )
    archived = rollup_model.objects.create(
        tenant=tenant,
        alias="reasoner",
        api_key=keys[0],
        hour=DROPPED + timedelta(days=3, hours=5),
        requests=40,
        input_tokens=4000,
        last_record_id=7,
        changed_xid=55,
    )
    return tenant, keys, records, archived


FIELDS = (
    "tenant_id",
    "alias",
    "accelerator",
    "api_key_id",
    "hour",
    "shard",
    "requests",
    "flagged_requests",
    "input_tokens",
    "reasoning_tokens",
    "flagged_input_tokens",
    "flagged_reasoning_tokens",
    "spend_usd",
    "flagged_spend_usd",
    "last_record_id",
    "changed_xid",
)


def _snapshot(model) -> dict[int, tuple[object, ...]]:  # type: ignore[no-untyped-def]
    return {r["id"]: tuple(r[f] for f in FIELDS) for r in model.objects.values("id", *FIELDS)}


def _constraints() -> dict[str, dict[str, object]]:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, "metering_usagerollup")


@pytest.mark.django_db(transaction=True)
def test_existing_rollups_are_kept_as_they_were(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, keys, _, archived = _old_world(old_apps)
    before = _snapshot(old_apps.get_model("metering", "UsageRollup"))
    assert len(before) == 6  # five hours' shards of the records, one of the dropped month
    migrate(leaf())
    from metering.models import UsageRollup

    assert _snapshot(UsageRollup) == before  # nothing rebuilt, moved or lost
    assert set(
        UsageRollup.objects.values_list(
            "provider_account_id", "upstream_model", "unanswered_requests"
        )
    ) == {(0, "", 0)}
    # the key now tells rows of another account or model apart ...
    old = UsageRollup.objects.get(pk=archived.pk)
    old.pk = None
    old.upstream_model = "gpt-5"
    old.save()
    old.pk = None
    old.upstream_model, old.provider_account_id = "", 7
    old.save()
    # ... and still refuses a second row of one full key
    old.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        old.save()
    constraints = _constraints()
    assert constraints["rollup_unique_hour"]["unique"]
    assert constraints["rollup_unique_hour"]["columns"] == [
        "tenant_id",
        "alias",
        "accelerator",
        "api_key_id",
        "provider_account_id",
        "upstream_model",
        "route_id",  # added by 0023 (routing), which runs after 0018 here
        "hour",
        "shard",
    ]
    assert constraints["rollup_account_hour"]["columns"] == ["provider_account_id", "hour"]
    assert "rollup_unique_hour_building" not in constraints
    UsageRollup.objects.filter(tenant_id=tenant.pk).delete()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent builds: PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_a_run_interrupted_after_building_an_index_completes(old_apps) -> None:  # type: ignore[no-untyped-def]
    """CREATE INDEX CONCURRENTLY runs outside a transaction: an interrupted run leaves the
    columns it added and an index behind (possibly invalid). The next run skips the
    columns and drops and rebuilds the index."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE metering_usagerollup"
            " ADD COLUMN unanswered_requests bigint DEFAULT 0 NOT NULL"
        )
        cursor.execute(
            "CREATE UNIQUE INDEX rollup_unique_hour_building ON metering_usagerollup (id)"
        )
        cursor.execute("CREATE INDEX rollup_account_hour ON metering_usagerollup (id)")
    migrate(leaf())
    constraints = _constraints()
    assert constraints["rollup_account_hour"]["columns"] == ["provider_account_id", "hour"]
    assert len(constraints["rollup_unique_hour"]["columns"]) == 9  # type: ignore[arg-type]
    assert "rollup_unique_hour_building" not in constraints
