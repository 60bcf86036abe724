"""Reporting reads on the read replica (config.db_router), against a real second database
alias: the test replica is a separate database (DATABASE_REPLICA_URL; `make test` sets
it), so a row written only there shows where a read went, and a write can be checked
never to land there."""

import asyncio
import threading
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import transaction

from config.db_router import REPLICA, ReportingRouter, reporting_reads
from metering.models import Tenant, UsageRecord, UsageRollup
from tests.api.test_usage_api import client_for
from tests.factories import TenantFactory, UsageRecordFactory

has_replica = REPLICA in django_settings.DATABASES
needs_replica = pytest.mark.skipif(
    not has_replica, reason="no replica alias: set DATABASE_REPLICA_URL (make test does)"
)
# Without the test case's wrapping transaction: inside one, every read is on the primary
# (config.db_router), as inside any transaction.
both = (
    pytest.mark.django_db(transaction=True, databases=["default", "replica"])
    if has_replica
    else pytest.mark.django_db
)


def on_replica(*objects) -> None:  # type: ignore[no-untyped-def]
    """Copy rows to the replica only (as replication would, or a row it has and the
    primary does not: what no real replica holds, and what tells the reads apart)."""
    for obj in objects:
        obj.save(using=REPLICA, force_insert=True)


def rollup_of(record: UsageRecord) -> UsageRollup:
    """The hourly rollup row of one unflagged record (what the summary and the series read
    for whole hours), unsaved."""
    return UsageRollup(
        tenant_id=record.tenant_id,
        alias=record.alias,
        accelerator=record.accelerator,
        api_key_id=record.api_key_id,
        hour=record.started_at.replace(minute=0, second=0, microsecond=0),
        requests=1,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        reasoning_tokens=record.reasoning_tokens,
        last_record_id=1,
    )


@needs_replica
@both
def test_usage_views_read_the_replica_only_when_replica_reads_are_on(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_REPLICA_READS = True
    tenant = TenantFactory()
    client, key = client_for(tenant)
    on_replica(tenant, key)
    UsageRecordFactory(tenant=tenant, api_key=key, alias="on-primary")
    replica_only = UsageRecordFactory.build(tenant=tenant, api_key=key, alias="on-replica")
    on_replica(replica_only, rollup_of(replica_only))
    # Whole hours: the summary and the series read the rollups (the edge hours, raw records).
    hours = {
        "since": (replica_only.started_at - timedelta(hours=2)).replace(
            minute=0, second=0, microsecond=0
        )
    }
    hours["until"] = hours["since"] + timedelta(hours=4)

    def aliases() -> dict[str, list[str]]:
        responses = {
            "records": client.get("/api/v1/usage/records"),
            "summary": client.get("/api/v1/usage/summary", {"group_by": "alias"}),
            "summary of whole hours": client.get(
                "/api/v1/usage/summary", {"group_by": "alias", **hours}
            ),
            "series": client.get(
                "/api/v1/usage/series", {"granularity": "hour", "group_by": "alias", **hours}
            ),
        }
        assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(
            responses, 200
        )
        return {
            name: [row["alias"] for row in r.json().get("results", r.json().get("data"))]
            for name, r in responses.items()
        }

    assert aliases() == dict.fromkeys(
        ("records", "summary", "summary of whole hours", "series"), ["on-replica"]
    )
    settings.RECKON_REPLICA_READS = False  # the operator's switch: all reads on the primary
    assert aliases() == dict.fromkeys(
        ("records", "summary", "summary of whole hours", "series"), ["on-primary"]
    )


@needs_replica
@both
def test_writes_and_reads_in_a_write_transaction_stay_on_the_primary(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_REPLICA_READS = True
    only_on_replica = TenantFactory.build(name="replica-only")
    on_replica(only_on_replica)
    with reporting_reads():
        assert Tenant.objects.filter(name="replica-only").exists()  # a reporting read
        written = Tenant.objects.create(name="written-in-scope")  # a write: the primary
        with transaction.atomic():  # a write path reads what it is about to write
            assert not Tenant.objects.filter(name="replica-only").exists()
            assert Tenant.objects.filter(pk=written.pk).exists()
    assert not Tenant.objects.filter(name="replica-only").exists()  # outside: the primary
    assert Tenant.objects.using("default").filter(pk=written.pk).exists()
    assert not Tenant.objects.using(REPLICA).filter(name="written-in-scope").exists()
    assert UsageRecord.objects.using(REPLICA).count() == 0


@needs_replica
def test_the_scope_belongs_to_its_thread_and_task(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_REPLICA_READS = True
    router = ReportingRouter()
    seen: dict[str, str] = {}

    def in_thread() -> None:
        seen["thread started inside the scope"] = router.db_for_read(Tenant)

    async def in_tasks() -> None:
        async def read(name: str) -> None:
            seen[name] = router.db_for_read(Tenant)

        with reporting_reads():
            inside = asyncio.create_task(read("task created inside the scope"))
        outside = asyncio.create_task(read("task created outside"))
        await asyncio.gather(inside, outside)

    with reporting_reads():
        seen["inside"] = router.db_for_read(Tenant)
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
    seen["after"] = router.db_for_read(Tenant)
    asyncio.run(in_tasks())
    assert seen == {
        "inside": REPLICA,
        "thread started inside the scope": "default",
        "after": "default",
        "task created inside the scope": REPLICA,
        "task created outside": "default",
    }
    assert router.db_for_write(Tenant) == "default"


@pytest.mark.skipif(has_replica, reason="checks the configuration without a replica")
@pytest.mark.django_db
def test_without_a_replica_reporting_reads_use_the_primary() -> None:
    tenant = TenantFactory()
    client, key = client_for(tenant)
    UsageRecordFactory(tenant=tenant, api_key=key, alias="on-primary")
    assert ReportingRouter().db_for_read(Tenant) == "default"
    with reporting_reads():
        assert ReportingRouter().db_for_read(Tenant) == "default"
    records = client.get("/api/v1/usage/records").json()["results"]
    assert [r["alias"] for r in records] == ["on-primary"]


@needs_replica
@both
def test_reconciliation_reads_the_replica_when_replica_reads_are_on(settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, date, datetime

    from metering.models import ProviderAccount, ReconciliationRow
    from tests.staff import staff_client

    client = staff_client("fin-replica", "finance-read")
    account = ProviderAccount(id=77, name="oa-replica", provider="openai", admin_key_env="X")
    row = ReconciliationRow(
        account=account,
        day=date(2026, 10, 2),
        upstream_model="on-replica",
        token_class="output",
        ours=1,
        theirs=1,
        drift=0,
        status="matched",
        computed_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    on_replica(account, row)
    query = {"account": "oa-replica", "period": "2026-10"}
    settings.RECKON_REPLICA_READS = True
    listed = client.get("/api/v1/finance/reconciliation", query)
    assert [r["upstream_model"] for r in listed.json()["results"]] == ["on-replica"]
    assert b"on-replica" in client.get("/api/v1/finance/reconciliation.csv", query).content
    settings.RECKON_REPLICA_READS = False
    refused = client.get("/api/v1/finance/reconciliation", query)  # not on the primary
    assert refused.status_code == 400 and "account" in refused.json()["error"]["detail"]
