"""An API key made in the console: its secret is shown once, authenticates a proxied call
through the real server (the official openai SDK, the simulator upstream), is never on a
page again, and once revoked in the console the next call is refused."""

import time
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Login, open_page, screenshot
from tests.browser.world import World

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db]

PROMPT = [{"role": "user", "content": "Why is the sky blue? Think it through."}]


def client(reckon_url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=reckon_url + "/v1", api_key=secret, max_retries=0)


def refused_within(reckon_url: str, secret: str, seconds: float) -> bool:
    """Whether a call with `secret` is refused (401) within `seconds`: servers drop a
    revoked key from their cache within RECKON_AUTH_CACHE_SECONDS (0.5 s here)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client(reckon_url, secret).models.list()
        except openai.AuthenticationError:
            return True
        time.sleep(0.1)
    return False


def test_a_key_made_in_the_console(
    page: Page, login: Login, world: World, reckon_url: str, artifacts_dir: Path
) -> None:
    login(world.developer)
    open_page(page, "/console/keys")
    page.fill("form.keys-create input[name=name]", "made-in-chromium")
    with page.expect_navigation() as navigation:
        page.click("form.keys-create button[type=submit]")
    created = navigation.value
    assert created is not None and created.status == 201
    assert "no-store" in created.headers.get("cache-control", "")
    secret = page.inner_text("#new-key-secret").strip()
    key_id = page.get_attribute("#new-key-secret", "data-key-id")
    assert secret.startswith("rk_") and key_id
    screenshot(page, artifacts_dir, "member-key-created")

    # the secret authenticates a proxied call: the simulator's reasoning model answers
    answer = client(reckon_url, secret).chat.completions.create(
        model="reasoner", messages=PROMPT, reasoning_effort="high"
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens > 0  # type: ignore[union-attr]

    # ... and is never shown again: not on a reload of the answer (the browser sends the
    # POST again), the list, the key's page, nor going back
    page.reload()
    page.wait_for_load_state()
    assert secret not in page.content()
    assert page.locator("#new-key-secret").count() == 0
    for path in ("/console/keys", f"/console/keys/{key_id}", "/console/usage"):
        open_page(page, path)
        assert secret not in page.content(), path
    open_page(page, "/console/keys")
    row = page.locator(f"tr[data-key-id='{key_id}']")
    assert "made-in-chromium" in row.inner_text() and "active" in row.inner_text()
    assert page.locator("#keys-table tr", has_text="made-in-chromium").count() == 1  # one key
    page.go_back()
    page.wait_for_load_state()
    assert secret not in page.content()

    # revoked in the console, the next call is refused
    open_page(page, "/console/keys")
    row = page.locator(f"tr[data-key-id='{key_id}']")
    with page.expect_navigation():
        row.locator("a[href$='/revoke']").click()
    with page.expect_navigation():
        page.click("#confirm-revoke")
    assert page.url.endswith("/console/keys")
    assert "revoked" in page.locator(f"tr[data-key-id='{key_id}']").inner_text()
    assert refused_within(reckon_url, secret, seconds=10)
    with pytest.raises(openai.AuthenticationError):
        client(reckon_url, secret).chat.completions.create(model="reasoner", messages=PROMPT)
