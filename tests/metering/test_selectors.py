"""Reads on the ledger: what budgets load (flagged records count against limits, as in the
proxy) and the one usage-totals reader (rollups and raw records agree)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.ledger.orm import usage_records_write
from metering.models import UsageRecord
from metering.selectors import (
    NO_USAGE,
    UsageTotals,
    reasoning_tokens_since,
    spend_since,
    usage_totals,
    usage_totals_by_tenant,
)
from tests.factories import ApiKeyFactory
from tests.usage_helpers import usage_row

pytestmark = pytest.mark.django_db
MONTH = datetime(2026, 11, 1, tzinfo=UTC)


def test_budget_loaders_count_flagged_records() -> None:
    key = ApiKeyFactory()
    other = ApiKeyFactory(tenant=key.tenant)
    at = MONTH + timedelta(days=3, minutes=5)
    usage_records_write(
        [
            usage_row(key, started_at=at, reasoning_tokens=10, spend_usd=Decimal("0.5")),
            usage_row(
                key,
                started_at=at + timedelta(hours=2),
                reasoning_tokens=7,
                spend_usd=Decimal("0.25"),
                flags=["reasoning_exceeds_output"],
            ),
            usage_row(other, started_at=at, reasoning_tokens=1, spend_usd=Decimal("0.125")),
            # before the month: counted in all-time totals only
            usage_row(
                key,
                started_at=MONTH - timedelta(hours=1),
                reasoning_tokens=100,
                spend_usd=Decimal("2"),
                flags=["total_mismatch"],
            ),
        ]
    )
    tenant = key.tenant_id
    assert spend_since(tenant_id=tenant, since=MONTH) == Decimal("0.875")
    assert spend_since(tenant_id=tenant) == Decimal("2.875")
    assert spend_since(tenant_id=tenant, api_key_id=key.pk, since=MONTH) == Decimal("0.75")
    assert reasoning_tokens_since(tenant_id=tenant, since=MONTH) == 18
    assert reasoning_tokens_since(tenant_id=tenant, api_key_id=key.pk, since=MONTH) == 17


def test_usage_totals_of_one_tenant_and_by_tenant_from_rollups_and_records() -> None:
    key = ApiKeyFactory()
    other = ApiKeyFactory()
    at = MONTH + timedelta(days=2, minutes=10)
    usage_records_write(
        [
            usage_row(key, started_at=at, input_tokens=3, output_tokens=5, reasoning_tokens=7),
            usage_row(key, started_at=at, alias="fast", input_tokens=11, cached_input_tokens=2),
            usage_row(key, started_at=at, output_tokens=100, flags=["total_mismatch"]),
            usage_row(other, started_at=at, input_tokens=13, output_tokens=0, reasoning_tokens=0),
            usage_row(key, started_at=MONTH - timedelta(hours=1), input_tokens=1000),  # before
        ]
    )
    last = UsageRecord.objects.filter(
        tenant_id=key.tenant_id, started_at__gte=MONTH, flags=[]
    ).order_by("-id")[0]
    start, end = MONTH, MONTH + timedelta(days=30)
    mine = usage_totals(tenant_id=key.tenant_id, start=start, end=end)
    assert mine.tokens == {
        ("reasoner", "input"): 3,
        ("reasoner", "output"): 5,
        ("reasoner", "reasoning"): 7,
        ("fast", "input"): 11,
        ("fast", "cache_read"): 2,
    }
    # the rollups' cut-off includes the flagged record; the raw read only unflagged ones
    assert mine.cutoff_record_id >= last.pk
    raw = usage_totals(tenant_id=key.tenant_id, start=start, end=end, up_to_record_id=last.pk)
    assert raw == UsageTotals(mine.tokens, last.pk)
    everyone = usage_totals_by_tenant(start=start, end=end)
    assert everyone[key.tenant_id] == mine
    assert everyone[other.tenant_id].tokens == {("reasoner", "input"): 13}
    chosen = usage_totals_by_tenant(tenant_ids=[other.tenant_id], start=start, end=end)
    assert list(chosen) == [other.tenant_id]
    tokens_only = usage_totals_by_tenant(start=start, end=end, with_cutoff=False)
    assert tokens_only[key.tenant_id] == UsageTotals(mine.tokens, 0)
    empty = MONTH + timedelta(days=40)
    assert usage_totals(tenant_id=key.tenant_id, start=empty, end=empty) == NO_USAGE
    assert usage_totals_by_tenant(start=empty, end=empty) == {}
