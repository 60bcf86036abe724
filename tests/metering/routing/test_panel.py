"""The alias admin's economics panel: per-target figures of the last 7 days, escaped,
and the alias change page renders it."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from metering.models import Alias, RouteLatencyBucket, RouteTargetHour
from metering.routing.panel import economics_panel
from tests.factories import RouteFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 10, 12, 30, tzinfo=UTC)


def test_panel_shows_each_target_over_the_last_7_days(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: breakers read unknown
    a = RouteFactory(alias="reasoner", name="a<b>", priority=0)
    RouteFactory(alias="reasoner", name="b", priority=1, is_active=False)
    hour = NOW.replace(minute=0) - timedelta(hours=2)
    RouteTargetHour.objects.create(
        route_id=a.pk,
        hour=hour,
        attempts=4,
        answered=3,
        reasoning_tokens=3000,
        serving_cost_usd=Decimal("0.3"),
        spend_usd=Decimal("1.2"),
    )
    RouteTargetHour.objects.create(  # 8 days ago: outside
        route_id=a.pk, hour=hour - timedelta(days=8), attempts=100, answered=100
    )
    RouteLatencyBucket.objects.create(route_id=a.pk, hour=hour, kind="latency", bucket=2, count=3)
    html = str(economics_panel(Alias.objects.get(name="reasoner"), now=NOW))
    assert "<td>a&lt;b&gt;</td><td>unknown</td><td>4</td><td>3</td><td>0.2500</td>" in html
    assert "<td>100 / 100</td><td>1000</td><td>0.100000</td><td>0.7500</td>" in html
    assert (
        "<td>b (inactive)</td><td>unknown</td><td>0</td><td>0</td><td>-</td><td>- / -</td>" in html
    )


def test_the_alias_change_page_renders_the_panel(client) -> None:  # type: ignore[no-untyped-def]
    RouteFactory(alias="reasoner", name="default")
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    alias = Alias.objects.get(name="reasoner")
    response = client.get(reverse("admin:metering_alias_change", args=[alias.pk]))
    assert response.status_code == 200
    assert b"conomics (last 7 days)" in response.content  # the admin capitalizes labels
    assert b"<th>cost / call (USD)</th>" in response.content
