"""Migration 0014: rollups rebuilt from the raw records with the API key and flagged sums,
folded into shard 0, keeping the highest record id they fold and the highest stamp of the
old rows they replace; and refusing when the old rollups disagree with the records. Run
against the migration graph itself (back to 0013, then forward)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("metering", "0013_ledger_partitions")]
HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.fixture
def old_apps():  # type: ignore[no-untyped-def]
    state = migrate(BEFORE).loader.project_state(BEFORE)
    yield state.apps
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def _old_world(apps):  # type: ignore[no-untyped-def]
    """Records of two keys and a flagged one in two hours, and old rollups (one per
    tenant, alias, accelerator and hour, split over shards 0 and 5) that agree."""
    tenant = apps.get_model("metering", "Tenant").objects.create(name="acme")
    key_model = apps.get_model("metering", "ApiKey")
    keys = [
        key_model.objects.create(tenant=tenant, prefix=f"rk_{i}", key_hash=uuid.uuid4().hex)
        for i in range(2)
    ]
    record_model = apps.get_model("metering", "UsageRecord")
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
                upstream_model="m",
                endpoint="chat.completions",
                status="completed",
                input_tokens=10 * (i + 1),
                reasoning_tokens=i,
                flags=["total_mismatch"] if i == 2 else [],
                started_at=at,
                finished_at=at,
            )
        )
    rollup_model = apps.get_model("metering", "UsageRollup")
    for hour in (HOUR, HOUR + timedelta(hours=1), HOUR + timedelta(hours=2)):
        inside = [r for r in records if hour <= r.started_at < hour + timedelta(hours=1)]
        rated = [r for r in inside if not r.flags]
        rollup_model.objects.create(
            tenant=tenant,
            alias="reasoner",
            hour=hour,
            shard=0,
            requests=len(rated) - 1,
            flagged_requests=len(inside) - len(rated),
            input_tokens=sum(r.input_tokens for r in rated) - 7,
            reasoning_tokens=sum(r.reasoning_tokens for r in rated),
            last_record_id=max(r.pk for r in inside) - 1,
            changed_xid=100,
        )
        rollup_model.objects.create(  # a writer's shard: one record, 7 input tokens
            tenant=tenant,
            alias="reasoner",
            hour=hour,
            shard=5,
            requests=1,
            input_tokens=7,
            last_record_id=max(r.pk for r in inside),
            changed_xid=200 + hour.hour,
        )
    return tenant, keys, records


@pytest.mark.django_db(transaction=True)
def test_rollups_are_rebuilt_per_key_with_flagged_sums_ids_and_stamps(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, keys, records = _old_world(old_apps)
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    from metering.models import UsageRollup

    rows = {(r.hour.hour, r.api_key_id): r for r in UsageRollup.objects.filter(tenant_id=tenant.pk)}
    assert set(rows) == {
        (9, keys[0].pk),
        (9, keys[1].pk),
        (10, keys[0].pk),
        (10, keys[1].pk),
        (11, keys[1].pk),
    }
    assert {r.shard for r in rows.values()} == {0}
    # 09:00 key 0: records 0 (09:00) and 2 (09:50, flagged); key 1: record 1 (09:25)
    nine = rows[(9, keys[0].pk)]
    assert (nine.requests, nine.input_tokens, nine.reasoning_tokens) == (1, 10, 0)
    assert (nine.flagged_requests, nine.flagged_input_tokens, nine.flagged_reasoning_tokens) == (
        1,
        30,
        2,
    )
    assert nine.last_record_id == records[2].pk
    assert rows[(9, keys[1].pk)].last_record_id == records[1].pk
    # each new row carries the highest stamp of the old rows of its hour
    assert {(h, r.changed_xid) for (h, _), r in rows.items()} == {(9, 209), (10, 210), (11, 211)}


@pytest.mark.django_db(transaction=True)
def test_the_rebuild_refuses_rollups_the_records_do_not_explain(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, _, _ = _old_world(old_apps)
    rollup_model = old_apps.get_model("metering", "UsageRollup")
    stray = rollup_model.objects.create(
        tenant=tenant, alias="ghost", hour=HOUR, shard=0, requests=3, input_tokens=99
    )
    with pytest.raises(RuntimeError, match="disagree with the old rollups in 1 old and 0 new"):
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    assert rollup_model.objects.filter(pk=stray.pk).exists()  # rolled back, nothing lost
    assert rollup_model.objects.count() == 7
    stray.delete()
