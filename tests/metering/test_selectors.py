"""What budgets load from the ledger: flagged records count against limits, as in the proxy."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.ledger.orm import usage_records_write
from metering.selectors import reasoning_tokens_since, spend_since
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
