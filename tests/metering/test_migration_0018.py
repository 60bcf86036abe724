"""Migration 0018: rollups rebuilt from the raw records with the provider account, the
upstream model and the unanswered requests, folded into shard 0, keeping the highest
record id they fold and the highest stamp of the old rows they replace; the rows of a
dropped month (no records to refold) kept as they were; and refusing when the old
rollups disagree with the records. Run against the migration graph itself (back to
0016, then forward)."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("metering", "0016_provider_reports")]
HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)
DROPPED = datetime(2026, 8, 1, tzinfo=UTC)  # archived and dropped: rollups, no records


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def leaf() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


@pytest.fixture
def old_apps():  # type: ignore[no-untyped-def]
    state = migrate(BEFORE).loader.project_state(BEFORE)
    yield state.apps
    migrate(leaf())


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


@pytest.mark.django_db(transaction=True)
def test_rollups_are_rebuilt_per_account_and_model_keeping_ids_and_stamps(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, keys, records, archived = _old_world(old_apps)
    old_rollups = old_apps.get_model("metering", "UsageRollup")
    stamps = {}
    for row in old_rollups.objects.filter(hour__gte=HOUR):
        group = (row.api_key_id, row.hour.hour)
        stamps[group] = max(stamps.get(group, 0), row.changed_xid)
    migrate(leaf())
    from metering.models import UsageRollup

    rows = {
        (r.hour.hour, r.api_key_id, r.upstream_model): r
        for r in UsageRollup.objects.filter(tenant_id=tenant.pk, hour__gte=HOUR)
    }
    assert set(rows) == {
        (9, keys[0].pk, "gpt-5"),  # records 0 (09:00) and 2 (09:50, flagged)
        (9, keys[1].pk, "gpt-5"),  # record 1 (09:25, upstream error)
        (10, keys[1].pk, "gpt-5"),  # record 3 (10:15, failed)
        (10, keys[0].pk, "gpt-5-mini"),  # record 4 (10:40, incomplete)
        (11, keys[1].pk, "gpt-5-mini"),  # record 5
    }
    assert {(r.shard, r.provider_account_id) for r in rows.values()} == {(0, 0)}
    nine = rows[(9, keys[0].pk, "gpt-5")]
    assert (nine.requests, nine.flagged_requests, nine.unanswered_requests) == (1, 1, 0)
    assert (nine.input_tokens, nine.flagged_input_tokens, nine.flagged_reasoning_tokens) == (
        10,
        30,
        2,
    )
    assert nine.last_record_id == records[2].pk
    assert rows[(9, keys[1].pk, "gpt-5")].unanswered_requests == 1
    assert rows[(10, keys[1].pk, "gpt-5")].unanswered_requests == 1
    assert rows[(10, keys[0].pk, "gpt-5-mini")].unanswered_requests == 0  # incomplete: answered
    if connection.vendor == "postgresql":  # (SQLite stores money as a float)
        assert nine.spend_usd == Decimal("0.000000000000000000000001")
        assert nine.flagged_spend_usd == Decimal("0.000000000000000000000003")
    # each new row carries the highest stamp of the old rows of its (key, hour)
    for (hour, key_id, _), row in rows.items():
        assert row.changed_xid == stamps[(key_id, hour)], (hour, key_id)
    # the dropped month's hour is kept as it was: account 0, no model, nothing unanswered
    kept = UsageRollup.objects.get(pk=archived.pk)
    assert (kept.requests, kept.input_tokens, kept.last_record_id, kept.changed_xid) == (
        40,
        4000,
        7,
        55,
    )
    assert (kept.provider_account_id, kept.upstream_model, kept.unanswered_requests) == (0, "", 0)


@pytest.mark.django_db(transaction=True)
def test_the_rebuild_refuses_rollups_the_records_do_not_explain(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, keys, _, _ = _old_world(old_apps)
    rollup_model = old_apps.get_model("metering", "UsageRollup")
    count = rollup_model.objects.count()
    stray = rollup_model.objects.filter(hour=HOUR, api_key=keys[0]).first()
    stray.input_tokens += 1
    stray.save()
    with pytest.raises(RuntimeError, match="disagree with the old rollups in 1 old and 1 new"):
        migrate(leaf())
    assert rollup_model.objects.count() == count  # rolled back, nothing lost
    assert rollup_model.objects.get(pk=stray.pk).input_tokens == stray.input_tokens
    stray.input_tokens -= 1
    stray.save()


@pytest.mark.django_db(transaction=True)
def test_the_rebuild_refuses_records_no_rollup_holds(old_apps) -> None:  # type: ignore[no-untyped-def]
    tenant, keys, _, _ = _old_world(old_apps)
    at = HOUR + timedelta(hours=5)
    unfolded = old_apps.get_model("metering", "UsageRecord").objects.create(
        request_id=uuid.uuid4(),
        tenant=tenant,
        api_key=keys[0],
        alias="reasoner",
        provider="openai",
        upstream_model="gpt-5",
        endpoint="chat.completions",
        status="completed",
        input_tokens=1,
        started_at=at,
        finished_at=at,
    )
    with pytest.raises(RuntimeError, match="disagree with the old rollups in 0 old and 1 new"):
        migrate(leaf())
    old_apps.get_model("metering", "UsageRollup").objects.create(
        tenant=tenant,
        alias="reasoner",
        api_key=keys[0],
        hour=at,
        requests=1,
        input_tokens=1,
        last_record_id=unfolded.pk,
    )
