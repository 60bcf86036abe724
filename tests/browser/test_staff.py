"""Staff in the console, in Chromium: finance (finance-read) opens every staff page without
errors, the margin charts draw exactly GET /api/v1/finance/margins/series for the same
window, each CSV equals its table; a tenant member gets the 403 page."""

from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.charts import api_get, csv_download, drawn, drawn_series, table_rows
from tests.browser.conftest import BrowserErrors, Login, open_page, screenshot, sign_in
from tests.browser.world import World

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db]

MARGINS = "/api/v1/finance/margins/series"
STAFF_PAGES = {
    "margins": "/console/staff/margins",
    "tenants": "/console/staff/tenants",
    "plans": "/console/staff/plans",
    "reconciliation": "/console/staff/reconciliation",
}


def margin_window(world: World, group_by: str) -> dict[str, str]:
    today = world.now.date()
    return {
        "since": (today - timedelta(days=40)).isoformat(),
        "until": (today + timedelta(days=1)).isoformat(),
        "granularity": "day",
        "group_by": group_by,
    }


def test_every_staff_page_renders_without_errors(
    page: Page, world: World, artifacts_dir: Path
) -> None:
    sign_in(page, world.finance.username, world.finance.password)
    assert page.url.endswith("/console/staff/margins")
    for name, path in STAFF_PAGES.items():
        response = open_page(page, path)
        assert response.status == 200, path
        screenshot(page, artifacts_dir, f"staff-{name}")


@pytest.mark.parametrize("group_by", ["accelerator", "alias", "tenant"])
def test_margin_charts_draw_what_the_api_returns(
    page: Page, login: Login, world: World, group_by: str
) -> None:
    login(world.finance)
    window = margin_window(world, group_by)
    open_page(page, "/console/staff/margins?" + "&".join(f"{k}={v}" for k, v in window.items()))
    base = page.url.split("/console")[0]
    answer = api_get(base, MARGINS, world.finance_token, **window)
    buckets, totals = answer["buckets"], answer["totals"]
    assert len(buckets) == 41 and any(t["cost_usd"] != "0" for t in totals), totals

    labels, values = drawn_series(page, "margin-revenue-cost")
    assert labels == buckets
    fields = ("revenue_usd", "cost_usd", "gross_margin_usd")
    assert values == {f: [t[f] for t in totals] for f in fields}

    labels, values = drawn_series(page, "reasoning-cost-share")
    assert labels == buckets
    assert values == {f: [t[f] for t in totals] for f in ("reasoning_cost_usd", "other_cost_usd")}
    reasoning = next(
        d
        for d in drawn(page, "reasoning-cost-share")["datasets"]
        if d["key"] == "reasoning_cost_usd"
    )
    assert reasoning["hatched"]

    cells = {(r["start"], r["group"]): r["gross_margin_usd"] for r in answer["rows"]}
    groups = [g["key"] for g in answer["groups"]]
    assert groups, answer["groups"]
    labels, values = drawn_series(page, f"margin-by-{group_by}")
    assert labels == buckets
    assert values == {g: [cells.get((b, g)) for b in buckets] for g in groups}


@pytest.mark.parametrize(
    "chart", ["margin-revenue-cost", "margin-by-alias", "reasoning-cost-share"]
)
def test_margin_csv_equals_the_table(page: Page, login: Login, world: World, chart: str) -> None:
    login(world.finance)
    window = margin_window(world, "alias")
    open_page(page, "/console/staff/margins?" + "&".join(f"{k}={v}" for k, v in window.items()))
    table = table_rows(page, chart)
    assert len(table) == 42
    assert csv_download(page, chart) == table


def test_a_member_gets_the_403_page_on_staff_pages(
    page: Page, login: Login, world: World, browser_errors: BrowserErrors
) -> None:
    login(world.acme.owner)
    assert "Margins" not in page.inner_text("header nav")
    for path in (*STAFF_PAGES.values(), "/console/staff/margins.csv"):
        browser_errors.expect(403, path)
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        assert page.inner_text("main h1") == "Not allowed"
