"""Our side of reconciliation (`metering.reconcile.ours.forwarded_usage`): what the ledger
forwarded on a provider account per UTC day, upstream model, tenant, alias and accelerator,
read from
the rollups the ledger's own write path keeps (PostgreSQL and SQLite)."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.db_router import REPLICA
from metering.ledger.orm import usage_records_write
from metering.models import ApiKey, ProviderAccount, ServingCostRate, UsageRecord, UsageRollup
from metering.reconcile.ours import ForwardedRow, forwarded_totals, forwarded_usage
from tests.factories import ApiKeyFactory
from tests.usage_helpers import usage_row

DAY = datetime(2026, 11, 3, tzinfo=UTC)


def account(name: str) -> ProviderAccount:
    return ProviderAccount.objects.create(name=name, provider="openai", admin_key_env="ADMIN")


@pytest.fixture
def rate() -> ServingCostRate:
    return ServingCostRate.objects.create(
        alias="reasoner",
        accelerator="nvidia-h100-sxm",
        effective_from=DAY - timedelta(days=30),
        input_usd=Decimal("1.25"),
        cache_read_usd=Decimal("0.125"),
        cache_write_usd=Decimal("1.5"),
        output_usd=Decimal("10"),
        reasoning_usd=Decimal("10.000000000000000001"),
    )


TOKENS = {
    "input_tokens": 100,
    "cached_input_tokens": 20,
    "cache_write_tokens": 3,
    "output_tokens": 7,
    "reasoning_tokens": 50,
}


def served(key: ApiKey, at: datetime, account_id: int | None, **values: Any) -> dict[str, Any]:
    """A record of TOKENS on an H100 (unless `values` say otherwise)."""
    values = {"accelerator": "nvidia-h100-sxm", **TOKENS, **values}
    return usage_row(key, started_at=at, provider_account_id=account_id, **values)


def forwarded(
    day: date,
    tenant_id: uuid.UUID,
    *,
    records: int = 1,
    upstream_model: str = "m",
    accelerator: str = "nvidia-h100-sxm",
    **overrides: Any,
) -> ForwardedRow:
    """The row of `records` answered records of TOKENS each, costing nothing, unless
    `overrides` say otherwise."""
    return ForwardedRow(
        day=day,
        upstream_model=upstream_model,
        tenant_id=tenant_id,
        alias="reasoner",
        accelerator=accelerator,
        records=records,
        requests=records,
        **{name: count * records for name, count in TOKENS.items()},
        serving_cost_usd=Decimal(0),
    )._replace(**overrides)


@pytest.mark.django_db
def test_forwarded_usage_per_day_model_tenant_alias_and_accelerator(rate: ServingCostRate) -> None:
    ours, theirs = account("org-main"), account("org-other")
    key, other_key = ApiKeyFactory(), ApiKeyFactory()
    first_tenant, second_tenant = sorted([key.tenant_id, other_key.tenant_id])
    if key.tenant_id != first_tenant:
        key, other_key = other_key, key
    rows = [
        # day 1, 09:10 and 23:59: one tenant, one alias, one model; one flagged
        served(key, DAY + timedelta(hours=9, minutes=10), ours.pk, rate=rate),
        served(
            key,
            DAY + timedelta(hours=23, minutes=59),
            ours.pk,
            flags=["total_mismatch"],
            rate=rate,
        ),
        # an upstream error and a failed call: counted as no request, tokens as seen
        served(key, DAY + timedelta(hours=10), ours.pk, status="upstream_error", input_tokens=5),
        served(key, DAY + timedelta(hours=11), ours.pk, status="failed", input_tokens=0),
        # an incomplete stream is answered: it counts
        served(key, DAY + timedelta(hours=12), ours.pk, status="incomplete"),
        # the same day, model, tenant and alias served on another accelerator: its own row
        served(key, DAY + timedelta(hours=13), ours.pk, accelerator="amd-mi300x"),
        # day 2: another tenant and a second model
        served(other_key, DAY + timedelta(days=1, hours=1), ours.pk, upstream_model="m2"),
        # other accounts and no account: never ours
        served(key, DAY + timedelta(hours=9), theirs.pk),
        served(key, DAY + timedelta(hours=9), None),
        # the day after the window
        served(key, DAY + timedelta(days=2), ours.pk),
    ]
    usage_records_write(rows)

    got = forwarded_usage(account_id=ours.pk, start=DAY.date(), end=DAY.date() + timedelta(2))

    cost = rows[0]["serving_cost_usd"]  # the flagged record's cost is not in the plain sums
    assert isinstance(got[1].serving_cost_usd, Decimal)
    if connection.vendor == "sqlite":  # SQLite sums decimals as floats: close, not exact
        assert abs(got[1].serving_cost_usd - cost) < Decimal("1e-15")
        got[1] = got[1]._replace(serving_cost_usd=cost)
    assert got == [
        forwarded(date(2026, 11, 3), key.tenant_id, accelerator="amd-mi300x"),
        forwarded(
            date(2026, 11, 3),
            key.tenant_id,
            records=5,
            requests=3,  # 5 records, of which 2 were not answered
            input_tokens=100 * 3 + 5,  # the upstream error's 5, the failed call's 0
            serving_cost_usd=cost,
        ),
        forwarded(date(2026, 11, 4), other_key.tenant_id, upstream_model="m2"),
    ]
    # summed over tenants (one tenant a day here): the same rows without the tenant
    totals = forwarded_totals(account_id=ours.pk, start=DAY.date(), end=DAY.date() + timedelta(2))
    if connection.vendor == "sqlite":
        totals[1] = totals[1]._replace(serving_cost_usd=cost)
    assert [(t.day, t.upstream_model, t.alias, t.accelerator) for t in totals] == [
        (r.day, r.upstream_model, r.alias, r.accelerator) for r in got
    ]
    assert [t[4:] for t in totals] == [r[5:] for r in got]
    # one day of the window; an empty window; the other account sees only its own
    assert [
        r.day
        for r in forwarded_usage(
            account_id=ours.pk, start=DAY.date(), end=DAY.date() + timedelta(1)
        )
    ] == [DAY.date(), DAY.date()]
    assert forwarded_usage(account_id=ours.pk, start=DAY.date(), end=DAY.date()) == []
    assert [
        r.requests
        for r in forwarded_usage(
            account_id=theirs.pk, start=DAY.date(), end=DAY.date() + timedelta(3)
        )
    ] == [1]


@pytest.mark.django_db
def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before start"):
        forwarded_usage(account_id=1, start=DAY.date(), end=DAY.date() - timedelta(1))


has_replica = REPLICA in django_settings.DATABASES


@pytest.mark.skipif(not has_replica, reason="no replica alias: set DATABASE_REPLICA_URL")
@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_forwarded_usage_is_a_reporting_read(settings) -> None:  # type: ignore[no-untyped-def]
    """It reads the replica when replica reads are on (a row only the replica holds
    shows where the read went), the primary otherwise, and always with `primary=True`
    (reconciliation's write path)."""
    org = account("org-replica")
    key = ApiKeyFactory()
    for obj in (key.tenant, key):
        obj.save(using=REPLICA, force_insert=True)
    UsageRollup(
        tenant_id=key.tenant_id,
        alias="reasoner",
        api_key_id=key.pk,
        provider_account_id=org.pk,
        upstream_model="m",
        hour=DAY,
        requests=4,
    ).save(using=REPLICA, force_insert=True)
    window = {"account_id": org.pk, "start": DAY.date(), "end": DAY.date() + timedelta(1)}
    settings.RECKON_REPLICA_READS = True
    assert [r.requests for r in forwarded_usage(**window)] == [4]
    assert forwarded_usage(**window, primary=True) == []
    settings.RECKON_REPLICA_READS = False
    assert forwarded_usage(**window) == []


@pytest.mark.django_db
def test_deleting_an_account_never_reads_the_ledger() -> None:
    """The record stamp does not protect its account (PROTECT would load every stamped
    record first); the records keep their stamp, and so does what they rolled up to."""
    org = account("org-gone")
    org_id = org.pk
    key = ApiKeyFactory()
    usage_records_write([served(key, DAY, org_id)])
    with CaptureQueriesContext(connection) as queries:
        org.delete()
    assert not [q for q in queries if "metering_usagerecord" in q["sql"]]
    assert list(UsageRecord.objects.values_list("provider_account_id", flat=True)) == [org_id]
    window = {"start": DAY.date(), "end": DAY.date() + timedelta(1)}
    assert [r.requests for r in forwarded_usage(account_id=org_id, **window)] == [1]
