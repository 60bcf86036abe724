"""The tenants nearest their limits: which tenants the bounded scan checks first."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from billing.watchlist import scan_order, tenants_nearest_limits
from metering.models import SpendLimit
from metering.selectors import spend_since, spend_since_by_tenant
from metering.services import api_key_create
from tests.factories import TenantFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def _tenant(name: str, limit: str, spent: list[str]) -> object:
    tenant = TenantFactory(name=name)
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal(limit))
    key = api_key_create(tenant=tenant).api_key
    for hour, usd in enumerate(spent):
        write_usage(key, NOV.replace(day=3, hour=hour), spend_usd=Decimal(usd))  # type: ignore[arg-type]
    write_usage(key, datetime(2026, 10, 30, tzinfo=UTC), spend_usd=Decimal("999"))  # type: ignore[arg-type]
    return tenant


def test_spend_by_tenant_is_each_tenants_spend_since() -> None:
    tenants = [
        _tenant("a", "10", ["1.5", "2"]),
        _tenant("b", "10", ["0.25"]),
        _tenant("c", "5", []),
    ]
    by_tenant = spend_since_by_tenant(since=NOV)
    for tenant in tenants:
        assert by_tenant.get(tenant.pk, Decimal(0)) == spend_since(tenant_id=tenant.pk, since=NOV)
    assert by_tenant[tenants[0].pk] == Decimal("3.5")
    with pytest.raises(ValueError, match="whole UTC hours"):
        spend_since_by_tenant(since=NOV.replace(minute=5))


def test_the_bounded_scan_checks_the_fullest_tenants_first() -> None:
    """A scan of one tenant finds the fullest, whatever its place among the ids."""
    low = _tenant("low", "100", ["1"])
    full = _tenant("full", "10", ["9.5"])
    mid = _tenant("mid", "10", ["4"])
    no_limit_spend = TenantFactory(name="keyonly")
    key = api_key_create(tenant=no_limit_spend).api_key
    SpendLimit.objects.create(tenant=no_limit_spend, api_key=key, window="month", amount_usd=1)
    ids = [low.pk, no_limit_spend.pk, mid.pk, full.pk]
    assert scan_order(ids, NOW) == [full.pk, mid.pk, low.pk, no_limit_spend.pk]
    with time_machine.travel(NOW, tick=False):
        nearest = tenants_nearest_limits(at=NOW, scan=1)
    assert [row.tenant_name for row in nearest.rows] == ["full"]
    assert nearest.checked == 1 and nearest.total == 4
    assert nearest.rows[0].budget.used == Decimal("9.5")
