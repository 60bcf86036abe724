"""Signing in to the console in Chromium: the form, a refusal, a member's landing page."""

from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import screenshot, sign_in
from tests.browser.world import World

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db]


def test_sign_in_page_renders_without_errors(page: Page, artifacts_dir: Path) -> None:
    response = page.goto("/console/login")
    assert response is not None and response.status == 200
    assert page.get_attribute("html", "lang") == "en"
    assert page.is_visible("#id_username") and page.is_visible("#id_password")
    screenshot(page, artifacts_dir, "login")


def test_a_wrong_password_is_refused_on_the_page(page: Page, world: World) -> None:
    page.goto("/console/login")
    page.fill("#id_username", world.acme.owner.username)
    page.fill("#id_password", world.acme.owner.password + "-wrong")
    with page.expect_navigation():
        page.click("form.signin button[type=submit]")
    assert page.url.endswith("/console/login")
    assert "correct username and password" in page.inner_text("[role=alert]")


def test_a_member_signs_in_to_the_overview_and_out_again(page: Page, world: World) -> None:
    sign_in(page, world.acme.owner.username, world.acme.owner.password)
    assert page.url.endswith("/console/overview")
    assert "acme · ana (owner)" in page.inner_text("header .who")
    with page.expect_navigation():
        page.click("header .who button[type=submit]")
    assert page.url.endswith("/console/login")
    page.goto("/console/usage")
    assert "/console/login?next=/console/usage" in page.url
