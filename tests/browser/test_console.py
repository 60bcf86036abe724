"""A tenant member's console in Chromium: every page renders without errors, each chart
draws exactly what the REST API returns for the same window, each CSV equals its table,
and a member sees only their own tenant, and only what their role allows."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page

from metering.calendar import month_start
from metering.usage import LEDGER_FIELDS, TOKEN_CLASSES
from tests.browser.charts import api_get, csv_download, drawn, drawn_series, pivot, table_rows
from tests.browser.conftest import BrowserErrors, Login, open_page, screenshot
from tests.browser.world import OTHER_TENANT_TOKENS, World

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db]

SERIES = "/api/v1/usage/series"


def z(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def day_window(world: World, days: int = 10) -> dict[str, str]:
    today = world.now.replace(hour=0)
    return {
        "granularity": "day",
        "since": z(today - timedelta(days=days)),
        "until": z(today + timedelta(days=1)),
    }


def query(params: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())


def member_pages(world: World) -> dict[str, str]:
    return {
        "overview": "/console/overview",
        "usage": "/console/usage",
        "usage-hourly": "/console/usage?granularity=hour",
        "keys": "/console/keys",
        "key": f"/console/keys/{world.acme.keys['ci'].pk}",
        "invoices": "/console/invoices",
        "invoice": f"/console/invoices/{world.acme.invoice.pk}",
        "balance": "/console/balance",
    }


def test_every_member_page_renders_without_errors(
    page: Page, login: Login, world: World, artifacts_dir: Path
) -> None:
    login(world.acme.owner)
    for name, path in member_pages(world).items():
        response = open_page(page, path)
        assert response.status == 200, (path, response.status)
        assert page.inner_text("main h1").strip(), path
        screenshot(page, artifacts_dir, f"member-{name}")
    # the pages show this tenant's own things
    page.goto("/console/invoices")
    assert world.acme.invoice.number in page.inner_text("#invoices-table")
    page.goto("/console/keys")
    assert world.acme.keys["batch"].prefix in page.inner_text("#keys-table")


def test_usage_charts_draw_what_the_api_returns(page: Page, login: Login, world: World) -> None:
    login(world.acme.owner)
    window = day_window(world)
    open_page(page, f"/console/usage?{query(window)}")
    token = world.acme.raw_keys["ci"]
    base = page.url.split("/console")[0]

    by_class = api_get(base, SERIES, token, **window)["data"]
    assert len(by_class) >= 9 and any(r["reasoning_tokens"] for r in by_class)
    labels, values = drawn_series(page, "usage-by-class")
    assert labels == [r["start"] for r in by_class]
    assert list(values) == list(TOKEN_CLASSES)
    for name in TOKEN_CLASSES:
        assert values[name] == [r[LEDGER_FIELDS[name]] for r in by_class], name
    # hidden reasoning is told apart from visible output: hatched, and named so
    datasets = {d["key"]: d for d in drawn(page, "usage-by-class")["datasets"]}
    assert datasets["reasoning"]["hatched"] and "hidden" in datasets["reasoning"]["label"].lower()

    labels, values = drawn_series(page, "usage-reasoning-share")
    assert labels == [r["start"] for r in by_class]
    assert values["reasoning_share_of_output"] == [r["reasoning_share_of_output"] for r in by_class]

    for chart_id, group_by, field in (
        ("usage-by-alias", "alias", "alias"),
        ("usage-by-key", "api_key", "api_key_id"),
    ):
        rows = api_get(base, SERIES, token, **window, group_by=group_by)["data"]
        expected_labels, expected = pivot(rows, field, "total_tokens")
        # two aliases, two keys (or three, after test_keys made one and called the proxy)
        assert len(expected) >= 2, (chart_id, expected)
        assert drawn_series(page, chart_id) == (expected_labels, expected), chart_id


def test_usage_charts_of_one_key_by_the_hour(page: Page, login: Login, world: World) -> None:
    login(world.acme.owner)
    window = {
        "granularity": "hour",
        "since": z(world.now - timedelta(hours=12)),
        "until": z(world.now + timedelta(hours=1)),
        "api_key": str(world.acme.keys["ci"].pk),
    }
    open_page(page, f"/console/usage?{query(window)}")
    base = page.url.split("/console")[0]
    rows = api_get(base, SERIES, world.acme.raw_keys["batch"], **window)["data"]
    assert len(rows) >= 6
    labels, values = drawn_series(page, "usage-by-class")
    assert labels == [r["start"] for r in rows]
    assert values["reasoning"] == [r["reasoning_tokens"] for r in rows]
    assert values["output"] == [r["output_tokens"] for r in rows]


def test_overview_chart_draws_the_months_daily_series(
    page: Page, login: Login, world: World
) -> None:
    login(world.acme.owner)
    open_page(page, "/console/overview")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = {
        "granularity": "day",
        "since": z(month_start(today)),
        "until": z(today + timedelta(days=1)),
    }
    base = page.url.split("/console")[0]
    rows = api_get(base, SERIES, world.acme.raw_keys["ci"], **window)["data"]
    labels, values = drawn_series(page, "reasoning-share")
    assert labels == [r["start"] for r in rows]
    assert values == {
        "output": [r["output_tokens"] for r in rows],
        "reasoning": [r["reasoning_tokens"] for r in rows],
    }


def test_invoice_pages_show_the_apis_numbers(page: Page, login: Login, world: World) -> None:
    login(world.billing)
    invoice = world.acme.invoice
    base = page.url.split("/console")[0]
    detail = api_get(base, f"/api/v1/invoices/{invoice.pk}", world.acme.raw_keys["ci"])
    open_page(page, "/console/invoices")
    row = page.locator(f"#invoices-table tr[data-invoice-id='{invoice.pk}']")
    assert row.locator("td[data-minor]").get_attribute("data-minor") == str(detail["total_minor"])
    open_page(page, f"/console/invoices/{invoice.pk}")
    assert page.get_attribute("#invoice-total", "data-minor") == str(detail["total_minor"])
    shown = page.eval_on_selector_all(
        "#invoice-lines tbody > tr[data-position] > td.num[data-minor]",
        "cells => cells.map(c => c.dataset.minor)",
    )
    assert shown == [str(line["amount_minor"]) for line in detail["lines"]]
    assert detail["total_minor"] > 0 and len(detail["lines"]) >= 3
    # the PDF is the API's: a download, fetched with the page's session
    pdf = page.request.get(f"/console/invoices/{invoice.pk}/pdf")
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF-")


@pytest.mark.parametrize(
    "chart_id", ["usage-by-class", "usage-reasoning-share", "usage-by-alias", "usage-by-key"]
)
def test_csv_download_equals_the_table(
    page: Page, login: Login, world: World, chart_id: str
) -> None:
    login(world.acme.owner)
    open_page(page, f"/console/usage?{query(day_window(world))}")
    table = table_rows(page, chart_id)
    assert len(table) >= 2 and len(table[0]) >= 2
    assert csv_download(page, chart_id) == table


def test_a_member_never_sees_another_tenants_data(
    page: Page, login: Login, world: World, browser_errors: BrowserErrors
) -> None:
    login(world.acme.owner)
    other = world.globex
    foreign = [
        f"/console/invoices/{other.invoice.pk}",
        f"/console/invoices/{other.invoice.pk}/pdf",
        f"/console/keys/{other.keys['gx'].pk}",
        f"/console/keys/{other.keys['gx'].pk}/revoke",
    ]
    for path in foreign:
        browser_errors.expect(404, path)
        response = page.goto(path)
        assert response is not None and response.status == 404, path
    browser_errors.expect(404, "/console/usage")
    response = page.goto(f"/console/usage?api_key={other.keys['gx'].pk}")
    assert response is not None and response.status == 404

    secrets = [
        other.tenant.name,
        other.invoice.number,
        other.keys["gx"].prefix,
        other.owner.username,
        str(OTHER_TENANT_TOKENS),
        f"{OTHER_TENANT_TOKENS:,}",
    ]
    for path in member_pages(world).values():
        open_page(page, path)
        content = page.content()
        assert [s for s in secrets if s in content] == [], path


def test_a_developer_has_no_invoices(
    page: Page, login: Login, world: World, browser_errors: BrowserErrors
) -> None:
    login(world.developer)
    nav = page.inner_text("header nav")
    assert "Usage" in nav and "API keys" in nav and "Invoices" not in nav
    for path in (
        "/console/invoices",
        f"/console/invoices/{world.acme.invoice.pk}",
        f"/console/invoices/{world.acme.invoice.pk}/pdf",
        "/console/balance",
    ):
        browser_errors.expect(403, path)
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        assert page.inner_text("main h1") == "Not allowed"
    # what the overview shows a developer: no balance, no upcoming invoice
    open_page(page, "/console/overview")
    assert page.locator("#overview-balance, #overview-upcoming").count() == 0


def test_a_billing_member_cannot_create_or_revoke_keys(
    page: Page, login: Login, world: World, browser_errors: BrowserErrors
) -> None:
    login(world.billing)
    open_page(page, "/console/keys")
    assert page.locator("form.keys-create").count() == 0
    assert page.locator("a[href$='/revoke']").count() == 0
    assert world.acme.keys["ci"].prefix in page.inner_text("#keys-table")
    browser_errors.expect(403, "/console/keys/new")
    response = page.goto("/console/keys/new")
    assert response is not None and response.status == 403
    # a forged POST with a valid CSRF token is refused by the role, not by CSRF
    page.goto("/console/keys")
    browser_errors.expect(403, f"/console/keys/{world.acme.keys['ci'].pk}/revoke")
    statuses = page.evaluate(
        """async (revoke) => {
          const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
          const post = async (url, fields) => {
            const body = new URLSearchParams({csrfmiddlewaretoken: token, ...fields});
            const response = await fetch(url, {method: "POST", body});
            await response.text();  // read to the end: not an aborted request later
            return response.status;
          };
          return [await post("/console/keys/new", {name: "sneaky"}), await post(revoke, {})];
        }""",
        f"/console/keys/{world.acme.keys['ci'].pk}/revoke",
    )
    assert statuses == [403, 403]
    page.goto("/console/keys")
    assert "sneaky" not in page.inner_text("#keys-table")
    ci = page.locator(f"#keys-table tr[data-key-id='{world.acme.keys['ci'].pk}']")
    assert "active" in ci.inner_text()
