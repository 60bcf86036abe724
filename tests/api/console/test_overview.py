"""The overview page: budgets with meters, the balance and the upcoming invoice for those
who may see money, the month's reasoning share and its daily chart (equal to the usage
API), the newest alerts; empty states for a tenant with nothing; one tenant only."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client

from billing.alerts import alerts_evaluate
from billing.balances import balance_credit
from billing.models import WebhookEndpoint
from billing.plans import subscription_create
from metering.models import ApiKey, SpendLimit, Tenant
from metering.services import api_key_create
from tests.api.console.helpers import chart_data, key_client, member_client
from tests.factories import TenantFactory
from tests.scenarios.test_invoicing_stories import version
from tests.staff import staff_user
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def use(key: ApiKey, at: datetime, usd: str, output: int, reasoning: int) -> None:
    write_usage(
        key,
        at,
        spend_usd=Decimal(usd),  # type: ignore[arg-type]
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


@pytest.fixture
def acme() -> dict[str, Any]:
    """A subscribed, prepaid tenant with a monthly $100 spend limit, alerts at 50 and 80 %,
    $85 spent this month (so past 80 %), usage on two days of November and one of
    October; and another tenant with a limit, usage and alerts of its own."""
    tenant = TenantFactory(name="acme")
    created = api_key_create(tenant=tenant, name="backend")
    key = created.api_key
    subscription_create(
        tenant=tenant,
        plan_version=version("standard", base="10", output="4.00"),
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    balance_credit(
        tenant_id=tenant.pk,
        kind="top_up",
        amount=Decimal("500.00"),
        idempotency_key="acme-top",
        effective_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("100"))
    WebhookEndpoint.objects.create(
        tenant=tenant,
        url="http://127.0.0.1:9/hook",
        secret="whsec_" + "k" * 32,
        thresholds=[95, 90],
        is_active=False,
    )
    use(key, datetime(2026, 10, 30, 10, tzinfo=UTC), "7", output=999, reasoning=111)
    use(key, NOV + timedelta(days=2, hours=3), "40", output=1_000, reasoning=3_000)
    use(key, NOV + timedelta(days=19, hours=9), "45", output=500, reasoning=500)
    with time_machine.travel(NOW, tick=False):
        alerts_evaluate(tenant_id=tenant.pk, at=NOW)

    other = TenantFactory(name="globex")
    other_key = api_key_create(tenant=other).api_key
    SpendLimit.objects.create(tenant=other, window="month", amount_usd=Decimal("3"))
    use(other_key, NOV + timedelta(days=2), "2.5", output=77_777, reasoning=66_666)
    with time_machine.travel(NOW, tick=False):
        alerts_evaluate(tenant_id=other.pk, at=NOW)
    return {"tenant": tenant, "api": key_client(created.raw_key), "other": other}


def _get(client: Client, path: str = "/console/overview") -> Any:
    with time_machine.travel(NOW, tick=False):
        return client.get(path)


def test_anonymous_is_sent_to_sign_in_and_staff_is_refused() -> None:
    response = Client(HTTP_HOST="127.0.0.1").get("/console/overview")
    assert response.status_code == 302
    assert response["Location"] == "/console/login?next=/console/overview"
    staff = Client(HTTP_HOST="127.0.0.1")
    staff.force_login(staff_user("fin", "finance-read"))
    assert staff.get("/console/overview").status_code == 403


def test_owner_sees_budgets_balance_upcoming_invoice_share_and_alerts(
    acme: dict[str, Any],
) -> None:
    response = _get(member_client(acme["tenant"], "owner", "owner"))
    assert response.status_code == 200
    html = response.content.decode()
    # the monthly spend limit: 85 of 100, past the first threshold (50), not at 100
    row = re.search(r'<tr data-budget="spend_limit:\d+">(.*?)</tr>', html, re.S)
    assert row, html
    assert "85.00 USD" in row.group(1) and "100.00 USD" in row.group(1)
    assert 'class="meter warn"' in row.group(1) and "85.0 %" in row.group(1)
    assert "past 50 %" in row.group(1)
    assert "Alerts at 50 %, 80 %, 100 % of each limit." in html  # no active endpoint
    # the balance, as GET /api/v1/balance (500 available, 92 of spend not invoiced yet)
    balance = acme["api"].get("/api/v1/balance").json()
    assert balance["available"] == "500.000000000000"
    assert "408.00 USD" in html  # remaining = 500 - (7 + 40 + 45)
    # the upcoming invoice, as GET /api/v1/invoices/upcoming
    with time_machine.travel(NOW, tick=False):
        upcoming = acme["api"].get("/api/v1/invoices/upcoming").json()
    assert f"{upcoming['total']} USD" in html
    for line in (line for s in upcoming["segments"] for line in s["lines"]):
        assert line["description"] in html
    # the month's share, as GET /api/v1/usage/summary: 3500 / (1500 + 3500)
    summary = acme["api"].get(
        "/api/v1/usage/summary",
        {"since": "2026-11-01T00:00:00Z", "until": "2026-11-21T00:00:00Z"},
    )
    share = summary.json()["data"][0]["reasoning_share_of_output"]
    assert share == "0.700000"
    assert f'data-share="{share}">70.0 %' in html
    # alerts: the newest first, as GET /api/v1/usage/alerts
    alerts = acme["api"].get("/api/v1/usage/alerts").json()["results"]
    assert [a["threshold"] for a in alerts if a["budget"].startswith("spend_limit")] == [80, 50]
    shown = re.findall(r'<tr data-alert="([0-9a-f-]+)">', html)
    assert shown == [a["event_id"] for a in alerts]


def test_meters_warn_from_the_active_endpoints_first_threshold(acme: dict[str, Any]) -> None:
    WebhookEndpoint.objects.filter(tenant=acme["tenant"]).update(is_active=True)
    html = _get(member_client(acme["tenant"], "owner", "owner")).content.decode()
    assert "Alerts at 90 %, 95 % of each limit." in html
    row = re.search(r'<tr data-budget="spend_limit:\d+">(.*?)</tr>', html, re.S)
    assert row and 'class="meter ok"' in row.group(1) and "85.0 %" in row.group(1)
    SpendLimit.objects.filter(tenant=acme["tenant"]).update(amount_usd=Decimal("85"))
    html = _get(member_client(acme["tenant"], "owner2", "owner")).content.decode()
    row = re.search(r'<tr data-budget="spend_limit:\d+">(.*?)</tr>', html, re.S)
    assert row and 'class="meter bad"' in row.group(1) and "limit reached" in row.group(1)


def test_reasoning_share_chart_equals_the_daily_series(acme: dict[str, Any]) -> None:
    html = _get(member_client(acme["tenant"], "dev")).content.decode()
    data = chart_data(html, "reasoning-share")
    rows = (
        acme["api"]
        .get(
            "/api/v1/usage/series",
            {
                "granularity": "day",
                "since": "2026-11-01T00:00:00Z",
                "until": "2026-11-21T00:00:00Z",
            },
        )
        .json()["data"]
    )
    assert (
        data["labels"]
        == [r["start"] for r in rows]
        == [
            "2026-11-03T00:00:00Z",
            "2026-11-20T00:00:00Z",
        ]
    )
    values = {s["key"]: s["values"] for s in data["series"]}
    assert values["output"] == [r["output_tokens"] for r in rows] == [1_000, 500]
    assert values["reasoning"] == [r["reasoning_tokens"] for r in rows] == [3_000, 500]
    assert [s["style"] for s in data["series"]] == ["default", "hidden"]


def test_members_without_the_billing_capability_see_no_money(acme: dict[str, Any]) -> None:
    html = _get(member_client(acme["tenant"], "dev", "developer")).content.decode()
    assert 'id="overview-balance"' not in html and 'id="overview-upcoming"' not in html
    assert 'data-budget="balance"' not in html
    assert "408.00" not in html
    assert 'data-budget="spend_limit:' in html  # limits they do see
    billing = _get(member_client(acme["tenant"], "bill", "billing")).content.decode()
    assert 'id="overview-balance"' in billing and 'data-budget="balance"' in billing


def test_the_balance_alerts_are_only_for_members_who_see_the_balance() -> None:
    tenant = TenantFactory(name="lowbalance")
    key = api_key_create(tenant=tenant).api_key
    balance_credit(
        tenant_id=tenant.pk,
        kind="top_up",
        amount=Decimal("10.00"),
        idempotency_key="low-top",
        effective_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("10"))
    use(key, NOV + timedelta(days=2, hours=3), "9", output=1_000, reasoning=3_000)
    with time_machine.travel(NOW, tick=False):
        alerts_evaluate(tenant_id=tenant.pk, at=NOW)
    balance_alerts = list(tenant.alerts.filter(budget="balance"))
    spend_alerts = list(tenant.alerts.exclude(budget="balance"))
    assert balance_alerts and spend_alerts
    dev = _get(member_client(tenant, "dev", "developer")).content.decode()
    billing = _get(member_client(tenant, "bill", "billing")).content.decode()
    for alert in balance_alerts:
        assert f'data-alert="{alert.event_id}"' not in dev
        assert f'data-alert="{alert.event_id}"' in billing
    for alert in spend_alerts:
        assert f'data-alert="{alert.event_id}"' in dev


def test_another_tenants_figures_never_show(acme: dict[str, Any]) -> None:
    html = _get(member_client(acme["tenant"], "owner", "owner")).content.decode()
    other_alerts = acme["other"].alerts.all()
    assert other_alerts.exists()
    for alert in other_alerts:
        assert str(alert.event_id) not in html
    for secret in ("77777", "66666", "3.00 USD", "2.50 USD"):
        assert secret not in html


def test_a_tenant_with_nothing_gets_empty_states() -> None:
    tenant: Tenant = TenantFactory(name="empty")
    response = _get(member_client(tenant, "owner", "owner"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "No budgets" in html
    assert "No prepaid balance" in html
    assert "No current plan" in html
    assert "No output tokens this month yet." in html
    assert "No alerts yet." in html
    assert chart_data(html, "reasoning-share")["labels"] == []
    assert "0.00 USD" in html  # spend this month


def test_the_overview_is_get_only(acme: dict[str, Any]) -> None:
    client = member_client(acme["tenant"], "poster", "owner")
    with time_machine.travel(NOW, tick=False):
        assert client.post("/console/overview").status_code == 405
        assert client.get("/console/overview").status_code == 200
