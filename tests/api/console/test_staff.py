"""The staff pages of the console: each behind the permission its REST view checks, the
margin charts equal to GET /api/v1/finance/margins/series for the same query (values,
labels and the CSV of each table), tenants nearest their limits, plan warnings,
reconciliation, and the admin's link to the console."""

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
import time_machine
from django.test import Client

from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.models import ProviderAccount, ReconciliationRow, SpendLimit
from metering.services import tenant_member_set
from tests.api.console.helpers import chart_data
from tests.billing.test_margin_series import spread_world
from tests.factories import ApiKeyFactory, TenantFactory
from tests.staff import staff_client, staff_user
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
STAFF_PAGES = [
    "/console/staff/margins",
    "/console/staff/margins.csv?chart=margin-revenue-cost",
    "/console/staff/tenants",
    "/console/staff/plans",
    "/console/staff/reconciliation",
]
QUERY = {"since": "2026-10-01", "until": "2026-12-01", "group_by": "accelerator"}


def signed_in(user: Any) -> Client:
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    return client


def values(chart: dict[str, Any]) -> dict[str, list[Any]]:
    return {s["key"]: s["values"] for s in chart["series"]}


def test_finance_sees_margin_charts_equal_to_the_api() -> None:
    spread_world()
    cfo = staff_user("cfo", "finance-read")
    page = signed_in(cfo).get("/console/staff/margins", QUERY)
    assert page.status_code == 200
    html = page.content.decode()
    api = staff_client("cfo-api", "finance-read").get("/api/v1/finance/margins/series", QUERY)
    answer = api.json()
    totals = answer["totals"]

    drawn = chart_data(html, "margin-revenue-cost")
    assert drawn["labels"] == answer["buckets"] and len(drawn["labels"]) == 61
    assert values(drawn) == {
        field: [t[field] for t in totals]
        for field in ("revenue_usd", "cost_usd", "gross_margin_usd")
    }
    shares = chart_data(html, "reasoning-cost-share")
    assert values(shares) == {
        field: [t[field] for t in totals] for field in ("reasoning_cost_usd", "other_cost_usd")
    }
    assert [s["style"] for s in shares["series"]] == ["hidden", "default"]
    by_group = chart_data(html, "margin-by-accelerator")
    expected: dict[str, list[Any]] = {
        g["key"]: [None] * len(answer["buckets"]) for g in answer["groups"]
    }
    for row in answer["rows"]:
        expected[row["group"]][answer["buckets"].index(row["start"])] = row["gross_margin_usd"]
    assert values(by_group) == expected
    assert set(expected) == {"nvidia-h100-sxm", "amd-mi300x", "(fees)"}
    # real figures, not zeros: the October day the three targets served
    day = answer["buckets"].index("2026-10-04T00:00:00+00:00")
    assert Decimal(values(drawn)["cost_usd"][day]) == Decimal("5.75")


def test_monthly_by_tenant_equals_the_api_too() -> None:
    world = spread_world()
    query = {**QUERY, "granularity": "month", "group_by": "tenant"}
    html = signed_in(staff_user("cfo", "finance-read")).get("/console/staff/margins", query)
    answer = staff_client("cfo-api", "finance-read").get("/api/v1/finance/margins/series", query)
    drawn = chart_data(html.content.decode(), "margin-revenue-cost")
    assert (
        drawn["labels"]
        == answer.json()["buckets"]
        == [
            "2026-10-01T00:00:00+00:00",
            "2026-11-01T00:00:00+00:00",
        ]
    )
    assert values(drawn)["revenue_usd"] == [t["revenue_usd"] for t in answer.json()["totals"]]
    by_tenant = chart_data(html.content.decode(), "margin-by-tenant")
    mine = next(s for s in by_tenant["series"] if s["key"] == str(world.key.tenant_id))
    assert mine["label"] == world.key.tenant.name
    assert mine["values"] == [
        r["gross_margin_usd"] for r in answer.json()["rows"] if r["group"] == mine["key"]
    ]


def test_each_tables_csv_is_the_chart() -> None:
    spread_world()
    client = signed_in(staff_user("cfo", "finance-read"))
    html = client.get("/console/staff/margins", QUERY).content.decode()
    for chart_id in ("margin-revenue-cost", "margin-by-accelerator", "reasoning-cost-share"):
        assert f"chart={chart_id}" in html
        download = client.get("/console/staff/margins.csv", {**QUERY, "chart": chart_id})
        assert download.status_code == 200 and download["Content-Type"] == "text/csv"
        table = list(csv.reader(io.StringIO(download.content.decode())))
        chart = chart_data(html, chart_id)
        assert table[0][1:] == [s["label"] for s in chart["series"]]
        assert [r[0] for r in table[1:]] == chart["labels"]
        for i, s in enumerate(chart["series"], start=1):
            assert [r[i] for r in table[1:]] == ["" if v is None else v for v in s["values"]]
    assert client.get("/console/staff/margins.csv", {**QUERY, "chart": "nope"}).status_code == 404


def test_a_bad_margin_query_is_a_400_page_naming_the_field() -> None:
    client = signed_in(staff_user("cfo", "finance-read"))
    page = client.get("/console/staff/margins", {"granularity": "hour"})
    assert page.status_code == 400 and "granularity" in page.content.decode()
    assert client.get("/console/staff/margins.csv", {"since": "x"}).status_code == 400


def test_operator_without_margins_view_may_not_open_margins() -> None:
    client = signed_in(staff_user("ops", "operator"))
    assert client.get("/console/staff/margins").status_code == 403
    assert client.get(STAFF_PAGES[1]).status_code == 403
    for url in STAFF_PAGES[2:]:
        assert client.get(url).status_code == 200, url
    nav = client.get("/console/staff/tenants").content.decode()
    assert "/console/staff/plans" in nav and "/console/staff/margins" not in nav


@pytest.mark.parametrize("role", ["owner", "developer", "billing"])
def test_a_member_gets_403_on_every_staff_page(role: str) -> None:
    member = tenant_member_set(tenant=TenantFactory(), username=f"m-{role}", role=role).member
    client = signed_in(member.user)
    for url in STAFF_PAGES:
        answer = client.get(url)
        assert answer.status_code == 403, url
        assert "Not allowed" in answer.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in() -> None:
    for url in STAFF_PAGES:
        answer = Client(HTTP_HOST="127.0.0.1").get(url)
        assert answer.status_code == 302 and answer["Location"].startswith("/console/login")


def test_tenants_nearest_their_limits_fullest_first() -> None:
    now = datetime.now(UTC)
    full, half = ApiKeyFactory(tenant__name="full"), ApiKeyFactory(tenant__name="half")
    ApiKeyFactory(tenant__name="no-budget")
    SpendLimit.objects.create(tenant=full.tenant, window="month", amount_usd=Decimal(10))
    SpendLimit.objects.create(tenant=half.tenant, window="month", amount_usd=Decimal(100))
    SpendLimit.objects.create(tenant=half.tenant, window="total", amount_usd=Decimal(60))
    write_usage(full, now, spend_usd=Decimal("9.5"))
    write_usage(half, now, spend_usd=Decimal(30))
    html = signed_in(staff_user("ops", "operator")).get("/console/staff/tenants").content.decode()
    rows = re.findall(r"<tr data-tenant=.*?</tr>", html, re.S)
    assert [re.search(r'<th scope="row">(\w[\w-]*)', r).group(1) for r in rows] == [  # type: ignore[union-attr]
        "full",
        "half",
    ]
    assert "95.0%" in rows[0] and 'class="meter warn"' in rows[0]
    # half's fullest budget is the all-time $60 limit (50%), not the monthly $100 (30%)
    assert "50.0%" in rows[1] and "All-time spend limit" in rows[1] and ">2</td>" in rows[1]


def test_plan_warnings_of_the_versions_in_use() -> None:
    plan = plan_create(code="cliffy", name="Cliffy")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            components=[
                {
                    "token_class": "output",
                    "charge_model": "volume",
                    "unit_tokens": 1000,
                    "tiers": [
                        {"up_to": Decimal(1000), "unit_price": Decimal("0.010"), "flat_fee": 5},
                        {"up_to": Decimal(10000), "unit_price": Decimal("0.008"), "flat_fee": 10},
                        {"up_to": None, "unit_price": Decimal("0.005")},
                    ],
                }
            ],
        )
    )
    unused = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="unused", name="Unused"),
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            components=[{"token_class": "output", "charge_model": "per_unit", "unit_price": 1}],
        )
    )
    subscription_create(
        tenant=TenantFactory(),
        plan_version=version,
        starts_at=datetime.now(UTC) - timedelta(days=3),
    )
    html = signed_in(staff_user("cfo", "finance-read")).get("/console/staff/plans").content.decode()
    assert f'data-plan-version="{version.pk}"' in html
    assert f'data-plan-version="{unused.pk}"' not in html
    assert "volume_cliff" in html and "1 subscription" in html


def test_reconciliation_per_account() -> None:
    oa = ProviderAccount.objects.create(
        name="oa-prod",
        provider="openai",
        admin_key_env="ADMIN_KEY",
        last_import_at=datetime(2026, 10, 20, 6, tzinfo=UTC),
    )
    ProviderAccount.objects.create(name="an-idle", provider="anthropic", admin_key_env="K")
    at = datetime(2026, 10, 21, tzinfo=UTC)

    def row(day: int, token_class: str, status: str, drift: int = 0) -> None:
        ReconciliationRow.objects.create(
            account=oa,
            day=date(2026, 10, day),
            upstream_model="gpt-x",
            token_class=token_class,
            ours=1000,
            theirs=1000 + drift,
            drift=drift,
            status=status,
            reasoning=700 if drift == -700 else 0,
            drift_equals_reasoning=drift == -700,
            computed_at=at,
        )

    row(1, "requests", "matched")
    row(2, "requests", "matched")
    row(2, "output", "drift", -700)
    row(3, "output", "drift", 40)
    row(19, "requests", "pending")
    client = signed_in(staff_user("ops", "operator"))
    html = client.get("/console/staff/reconciliation", {"period": "2026-10"}).content.decode()
    section = re.search(r'data-account="oa-prod">.*?</section>', html, re.S).group(0)  # type: ignore[union-attr]
    assert '<strong class="recon-days">4</strong>' in section
    assert '<strong class="recon-settled">3</strong>' in section
    assert '<strong class="recon-unsettled">1</strong>' in section
    assert re.findall(r">(\w+)</span></td><td class=\"num\">(\d+)<", section) == [
        ("drift", "2"),
        ("matched", "2"),
        ("pending", "1"),
    ]
    worst = re.search(r'<table class="data recon-worst">.*?</table>', section, re.S).group(0)  # type: ignore[union-attr]
    assert worst.index("-700") < worst.index(">40<") and "drift = our reasoning" in worst
    assert "2026-10-20 06:00" in section
    assert 'data-account="an-idle"' in html
    assert client.get("/console/staff/reconciliation", {"period": "2026-13"}).status_code == 400


def test_the_admin_index_links_to_the_console() -> None:
    client = signed_in(staff_user("ops", "operator"))
    html = client.get("/admin/").content.decode()
    assert 'href="/console/staff/margins"' in html


def test_prorated_months_answer_200_on_the_page_and_the_apis() -> None:
    """Review #1: a tenant subscribed mid-month and a plan change mid-month (the rating
    splits October into segments) no longer trap Inexact; page, series and report agree."""
    from billing.costs.provider_costs import EXACT
    from billing.pricing.currency import decimal_text
    from billing.pricing.periods import Period
    from billing.reports import margin_report, margin_series
    from tests.billing.routed_world import NOV, T0
    from tests.billing.test_margin_prorated import prorated_world

    world, late = prorated_world()
    query = {"since": "2026-10-01", "until": "2026-11-01", "group_by": "tenant"}
    page = signed_in(staff_user("cfo", "finance-read")).get("/console/staff/margins", query)
    assert page.status_code == 200
    api = staff_client("cfo-api", "finance-read")
    series = api.get("/api/v1/finance/margins/series", query)
    assert series.status_code == 200
    report = api.get("/api/v1/finance/margins", {"period": "2026-10", "group_by": "tenant"})
    assert report.status_code == 200
    expected = {
        r.key[0]: r.revenue_usd
        for r in margin_report(period=Period(T0, NOV), group_by=("tenant",))
        if r.kind == "usage"
    }
    assert {str(world.key.tenant_id), str(late.pk)} <= set(expected)
    # The API writes each cell of the series (whose month sums to the report exactly)
    # as decimal_text writes it.
    cells = margin_series(since=T0, until=NOV, group_by="tenant").rows
    assert [(r["group"], r["revenue_usd"]) for r in series.json()["rows"]] == [
        (c.group, decimal_text(c.revenue_usd)) for c in cells
    ]
    days: dict[str, Decimal] = {}
    with localcontext(EXACT):
        for c in cells:
            days[c.group] = days.get(c.group, Decimal(0)) + c.revenue_usd
    assert days == expected
    drawn = chart_data(page.content.decode(), "margin-by-tenant")
    assert {s["key"] for s in drawn["series"]} == set(expected)


def test_margin_page_totals_round_money_half_up() -> None:
    """Review #14: money as billing.pricing.currency.quantize rounds it (half up)."""
    from api.console.views.staff import _window_totals

    totals = _window_totals(
        [
            {"revenue_usd": "0.1", "cost_usd": "0.003", "reasoning_cost_usd": "0"},
            {"revenue_usd": "0.025", "cost_usd": "0.002", "reasoning_cost_usd": "0.00125"},
        ]
    )
    assert (totals["revenue"], totals["cost"], totals["margin"]) == (
        Decimal("0.13"),
        Decimal("0.01"),
        Decimal("0.12"),
    )
    assert totals["reasoning_pct"] == Decimal("25.0")  # 0.00125 / 0.005
    assert totals["margin_pct"] == Decimal("96.0")


def test_a_tenant_at_60_percent_with_alerts_at_50_and_80_warns_on_both_pages() -> None:
    """One "near the limit" rule (billing.alerts.budget_state): the member's overview and
    the staff's tenants page both warn once the tenant's first alert threshold is crossed."""
    from billing.models import WebhookEndpoint

    now = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
    key = ApiKeyFactory(tenant__name="sixty")
    SpendLimit.objects.create(tenant=key.tenant, window="month", amount_usd=Decimal(100))
    WebhookEndpoint.objects.create(
        tenant=key.tenant,
        url="http://127.0.0.1:9/h",
        secret="whsec_" + "k" * 32,
        thresholds=[50, 80],
    )
    write_usage(key, datetime(2026, 11, 3, 10, tzinfo=UTC), spend_usd=Decimal(60))
    tenant_member_set(tenant=key.tenant, username="sixty-owner", role="owner")
    from django.contrib.auth import get_user_model

    member = get_user_model().objects.get(username="sixty-owner")
    with time_machine.travel(now, tick=False):
        staff_html = signed_in(staff_user("ops", "operator")).get("/console/staff/tenants")
        member_html = signed_in(member).get("/console/overview")
    row = re.search(r"<tr data-tenant=.*?</tr>", staff_html.content.decode(), re.S)
    assert row and "60.0%" in row.group(0) and 'class="meter warn"' in row.group(0)
    budget = re.search(
        r'<tr data-budget="spend_limit:\d+">(.*?)</tr>', member_html.content.decode(), re.S
    )
    assert budget and "60.0 %" in budget.group(1) and 'class="meter warn"' in budget.group(1)


def test_the_tenants_page_checks_a_bounded_number_of_tenants_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import billing.watchlist

    monkeypatch.setattr(billing.watchlist, "SCAN_LIMIT", 2)
    for name in ("a", "b", "c"):
        SpendLimit.objects.create(
            tenant=TenantFactory(name=name), window="month", amount_usd=Decimal(10)
        )
    html = signed_in(staff_user("ops", "operator")).get("/console/staff/tenants").content.decode()
    assert len(re.findall(r"<tr data-tenant=", html)) == 2
    assert "Only 2 of the 3 tenants with a budget were checked" in html
