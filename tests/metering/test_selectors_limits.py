"""What limits load (`spend_since`, `reasoning_tokens_since`): a tenant's and a key's use
from the hourly rollups, flagged records included, equal to a plain sum of the records;
unchanged when a month is archived and dropped from the ledger (rollups are kept); and
only from a whole UTC hour."""

import os
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum

from metering.control.budgets import BudgetKind, BudgetSpec, budget_use
from metering.ledger.archive import ledger_month_archive
from metering.ledger.orm import usage_records_write
from metering.models import ApiKey, LedgerArchive, UsageRecord
from metering.selectors import reasoning_tokens_since, spend_since
from tests.factories import ApiKeyFactory
from tests.usage_helpers import usage_row

pytestmark = pytest.mark.django_db

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
postgres_only = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").split(":")[0] not in ("postgres", "postgresql"),
    reason="partitions (and so a drop) exist on PostgreSQL only",
)


def write_usage(keys: list[ApiKey], month: datetime, count: int) -> None:
    """`count` records over the month for `keys` in turn: every third flagged, every
    seventh uncosted, spend exact to the 24th decimal on PostgreSQL (binary-exact on
    SQLite, which sums a double)."""
    tail = Decimal("0.000000000000000000000001") if os.environ.get("DATABASE_URL") else 0
    usage_records_write(
        [
            usage_row(
                keys[n % len(keys)],
                started_at=month + timedelta(hours=13 * n, microseconds=n * 7919),
                reasoning_tokens=100 * n + 1,
                output_tokens=n,
                spend_usd=None if n % 7 == 6 else Decimal("0.125") * n + tail * n,
                flags=["reasoning_exceeds_output"] if n % 3 == 2 else [],
            )
            for n in range(count)
        ]
    )


def raw_use(key: ApiKey | None, tenant_id: Any, since: datetime | None) -> tuple[Decimal, int]:
    """(spend, reasoning tokens) of the tenant's records, or of one key's, from `since`:
    a plain sum, flags ignored."""
    records = UsageRecord.objects.filter(tenant_id=tenant_id)
    if key is not None:
        records = records.filter(api_key_id=key.pk)
    if since is not None:
        records = records.filter(started_at__gte=since)
    sums = records.aggregate(spend=Sum("spend_usd"), reasoning=Sum("reasoning_tokens"))
    return sums["spend"] or Decimal(0), sums["reasoning"] or 0


def expected_use(key: ApiKey | None, tenant_id: Any, since: datetime | None) -> tuple[Decimal, int]:
    """`raw_use` as `loaded_use` asks: spend from `since`, reasoning from `since` or SEP."""
    return raw_use(key, tenant_id, since)[0], raw_use(key, tenant_id, since or SEP)[1]


def loaded_use(key: ApiKey | None, tenant_id: Any, since: datetime | None) -> tuple[Decimal, int]:
    """(spend, reasoning tokens) as limits load them (reasoning budgets are monthly:
    from `since` or SEP)."""
    key_id = None if key is None else key.pk
    return (
        spend_since(tenant_id=tenant_id, api_key_id=key_id, since=since),
        reasoning_tokens_since(tenant_id=tenant_id, api_key_id=key_id, since=since or SEP),
    )


def test_a_tenants_and_a_keys_use_equal_the_sum_of_their_records() -> None:
    key = ApiKeyFactory()
    other = ApiKeyFactory(tenant=key.tenant)
    stranger = ApiKeyFactory()  # another tenant: never counted
    write_usage([key, other, stranger], SEP, count=60)
    write_usage([key], OCT, count=5)
    tenant = key.tenant_id
    for since in (None, SEP, SEP + timedelta(days=4, hours=13), OCT, OCT + timedelta(days=40)):
        for who in (None, key, other):
            assert loaded_use(who, tenant, since) == expected_use(who, tenant, since), (who, since)
    assert spend_since(tenant_id=tenant, api_key_id=key.pk) > 0
    assert spend_since(tenant_id=tenant, api_key_id=stranger.pk) == 0  # not the tenant's key


def test_limits_count_from_a_whole_utc_hour_only() -> None:
    key = ApiKeyFactory()
    tenant = key.tenant_id
    write_usage([key], SEP, count=3)
    ist = timezone(timedelta(hours=5, minutes=30))
    on_the_hour = datetime(2026, 9, 1, 5, 30, tzinfo=ist)  # 00:00 UTC
    assert spend_since(tenant_id=tenant, api_key_id=key.pk, since=on_the_hour) == spend_since(
        tenant_id=tenant, api_key_id=key.pk, since=SEP
    )
    for since in (
        datetime(2026, 9, 1, 5, 0, tzinfo=ist),  # 23:30 UTC
        SEP + timedelta(minutes=1),
        SEP + timedelta(microseconds=1),
    ):
        for key_id in (None, key.pk):
            with pytest.raises(ValueError, match="whole UTC hours"):
                spend_since(tenant_id=tenant, api_key_id=key_id, since=since)
            with pytest.raises(ValueError, match="whole UTC hours"):
                reasoning_tokens_since(tenant_id=tenant, api_key_id=key_id, since=since)


@pytest.fixture
def archive_dir(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "archive"
    settings.RECKON_LEDGER_ARCHIVE_URL = root.as_uri()
    settings.RECKON_LEDGER_ARCHIVE_ENDPOINT_URL = ""
    return root


@postgres_only
def test_a_keys_all_time_spend_keeps_a_month_archived_and_dropped(archive_dir: Path) -> None:
    key = ApiKeyFactory()
    other = ApiKeyFactory(tenant=key.tenant)
    write_usage([key, other], SEP, count=40)
    write_usage([key, other], OCT, count=6)
    tenant = key.tenant_id
    all_time = BudgetSpec(kind=BudgetKind.SPEND, api_key_id=key.pk, monthly=False, limit=None)
    before = {
        (who, since): loaded_use(who, tenant, since)
        for who in (None, key, other)
        for since in (None, SEP, SEP + timedelta(days=9, hours=5), OCT)
    }
    assert before == {(who, since): expected_use(who, tenant, since) for who, since in before}
    spent = budget_use(all_time, tenant_id=tenant, month=OCT)
    assert spent == before[(key, None)][0] > before[(key, OCT)][0] > 0

    assert ledger_month_archive(month=SEP).state == LedgerArchive.State.DROPPED
    assert not UsageRecord.objects.filter(started_at__lt=OCT, tenant_id=tenant).exists()
    after = {(who, since): loaded_use(who, tenant, since) for who, since in before}
    assert after == before
    assert budget_use(all_time, tenant_id=tenant, month=OCT) == spent
