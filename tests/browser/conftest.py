"""Browser fixtures: the console of a real Reckon server on loopback (the e2e `reckon_url`
process against the pytest PostgreSQL database, the simulator as upstream), driven by
Debian's Chromium through Playwright's sync API.

- The data (`world`) is written once for the package, committed (the server must see
  it), before the browser starts, and flushed after the last browser test, as after a
  transactional test. The tests are marked `django_db` (so pytest-django sets up the test
  database) and talk to the server over HTTP; their own test transaction stays empty.
  Tests that add data (a key made in the UI, a proxied call) leave the rest as it was.
- One browser for the package, a fresh context (cookies, storage) per test. While
  Playwright's sync API runs, the main thread sits in an asyncio loop and Django refuses
  ORM calls as "async unsafe" (the per-test transaction included): the browser's fixture
  allows them while it runs, and only then (package scope, not session: the tests after
  these keep Django's check).
- Every page a test opens is watched: a console error, an uncaught page error, a failed
  request or an HTTP error status (4xx/5xx) on a document or static file fails the test,
  unless the test said it expects that status (`BrowserErrors.expect`).
- Screenshots go to RECKON_ARTIFACTS_DIR (default `.artifacts/screenshots` in the
  repository, ignored by git), one PNG per page a test names.
"""

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test import override_settings
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    sync_playwright,
)

from tests.browser.world import Person, World, world_create
from tests.e2e.conftest import SIM_KEY_ENV, database_url, free_port, stop, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


@dataclass(frozen=True)
class Servers:
    reckon_url: str
    simulator_url: str


@pytest.fixture(scope="session")
def servers(django_db_setup, django_db_blocker) -> Iterator[Servers]:  # type: ignore[no-untyped-def]
    """The simulator and a Reckon server (`manage.py serve`, configured as the e2e
    `reckon_url`), started side by side: each takes seconds to import Django."""
    with django_db_blocker.unblock():
        url = database_url()
    sim_port, port = free_port(), free_port()
    base = {**os.environ, "RECKON_ENV": "development", "PYTHONUNBUFFERED": "1"}
    simulator = subprocess.Popen(
        [sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)], cwd=ROOT, env=base
    )
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env={
            **base,
            "DATABASE_URL": url,
            "RECKON_AUTH_CACHE_SECONDS": "0.5",
            "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            SIM_KEY_ENV: "sim-test-key",
        },
    )
    try:
        # generous: on a loaded 2-core machine each start takes tens of seconds
        wait_until_up(f"http://127.0.0.1:{sim_port}/_sim/health", simulator, timeout=120)
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", server, timeout=120)
        yield Servers(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}")
    finally:
        stop(server)
        stop(simulator)


@pytest.fixture(scope="session")
def reckon_url(servers: Servers) -> str:
    return servers.reckon_url


@pytest.fixture(scope="session")
def simulator_url(servers: Servers) -> str:
    return servers.simulator_url


# What a page waits for at most (ms): generous for a loaded 2-core machine, never slept.
TIMEOUT_MS = 15_000


@pytest.fixture(scope="package")
def orm(django_db_setup, django_db_blocker) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """Committed database writes for the browser tests (the server process must see
    them): `with orm(): ...`. After the last browser test the database is flushed, as
    after a transactional test, so nothing leaks into the tests that follow."""

    @contextmanager
    def block() -> Iterator[None]:
        # Reporting reads stay on the primary, as in every test (tests/conftest.py).
        with django_db_blocker.unblock(), override_settings(RECKON_REPLICA_READS=False):
            # pytest-django sets the test database up only for a run that has tests
            # marked django_db (or using db): without it, this would be another database.
            # By then the connection names the test database already: TEST_DATABASE_NAME
            # when set, else Django's "test_" + the configured name.
            name = connection.settings_dict["NAME"]
            if name != connection.settings_dict["TEST"].get("NAME") and not name.startswith(
                "test_"
            ):
                raise RuntimeError(f"{name} is not the test database: mark the tests django_db")
            yield

    yield block
    with block():
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="package")
def world(orm, simulator_url: str) -> World:  # type: ignore[no-untyped-def]
    """What every browser test looks at (tests/browser/world.py), written before the
    browser starts."""
    with orm():
        return world_create(simulator_url=simulator_url)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("RECKON_ARTIFACTS_DIR") or ROOT / ".artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="package")
def browser(world) -> Iterator[Browser]:  # type: ignore[no-untyped-def]
    # After the data is written (ORM calls), stopped before it is flushed.
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"  # see the module docstring
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            yield browser
            browser.close()
            # Connections the tests' transactions opened while the loop ran belong to
            # its context: closed here, or the test database could not be dropped.
            connections.close_all()
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


@dataclass
class BrowserErrors:
    """What went wrong in a test's pages: console errors, page errors, failed requests
    and HTTP errors. `expect(status, path)` accepts one status for URLs ending in a path
    (a 404 page the test opens on purpose, and Chromium's console line about it)."""

    base_url: str
    problems: list[str] = field(default_factory=list)
    expected: list[tuple[int, str]] = field(default_factory=list)

    def expect(self, status: int, path: str) -> None:
        self.expected.append((status, path))

    def _expected(self, status: int, url: str) -> bool:
        bare = url.split("?", 1)[0]
        return any(status == s and bare.endswith(p) for s, p in self.expected)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every error response of a document or subresource as
        # "Failed to load resource: the server responded with a status of 404 (...)".
        status = re.search(r"status of (\d{3})", message.text)
        url = message.location.get("url", "")
        if status and self._expected(int(status.group(1)), url):
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {error}")

    def on_request_failed(self, request: Request) -> None:
        # A download the test reads itself is not a failed request.
        if request.failure and "ERR_ABORTED" in request.failure and "csv" in request.url:
            return
        self.problems.append(f"request failed: {request.method} {request.url} {request.failure}")

    def on_response(self, response: Response) -> None:
        if response.status >= 400 and not self._expected(response.status, response.url):
            kind = response.request.resource_type
            self.problems.append(f"HTTP {response.status} ({kind}): {response.url}")

    def watch(self, page: Page) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", self.on_page_error)
        page.on("requestfailed", self.on_request_failed)
        page.on("response", self.on_response)


@pytest.fixture
def browser_errors(reckon_url: str, request: pytest.FixtureRequest) -> BrowserErrors:
    errors = BrowserErrors(reckon_url)
    request.node.browser_errors = errors  # read by pytest_runtest_call below
    return errors


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test whose pages logged errors FAILS (not a teardown error), with the list."""
    result = yield
    errors: BrowserErrors | None = getattr(item, "browser_errors", None)
    if errors is not None and errors.problems:
        pytest.fail("the browser saw errors:\n  " + "\n  ".join(errors.problems), pytrace=False)
    return result


@pytest.fixture
def context(browser: Browser, reckon_url: str) -> Iterator[BrowserContext]:
    context = browser.new_context(
        base_url=reckon_url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, browser_errors: BrowserErrors) -> Page:
    page = context.new_page()
    browser_errors.watch(page)
    return page


@pytest.fixture
def fresh_page(browser: Browser, reckon_url: str, browser_errors: BrowserErrors) -> Iterator[Any]:
    """`fresh_page()`: a watched page in a context of its own (another person, signed out)."""
    opened: list[BrowserContext] = []

    def make() -> Page:
        extra = browser.new_context(base_url=reckon_url, viewport={"width": 1280, "height": 900})
        extra.set_default_timeout(TIMEOUT_MS)
        opened.append(extra)
        made = extra.new_page()
        browser_errors.watch(made)
        return made

    yield make
    for extra in opened:
        extra.close()


def sign_in(page: Page, username: str, password: str) -> None:
    """Sign in through the console's form; ends on the page the console lands on."""
    page.goto("/console/login")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("form.signin button[type=submit]")
    assert "/console/login" not in page.url, page.inner_text("main")


Login = Callable[[Person], None]


@pytest.fixture(scope="package")
def session_cookies() -> dict[str, list[Any]]:
    """Cookies of a session signed in through the form, by username (see `login`)."""
    return {}


@pytest.fixture
def login(context: BrowserContext, page: Page, session_cookies: dict[str, list[Any]]) -> Login:
    """`login(person)`, ending on the page a sign-in lands on: the first time through the
    sign-in form, after that with the same session's cookies in the test's fresh context (a sign-in costs a password hash on a
    loaded server; the sign-in tests themselves use `sign_in`)."""

    def as_person(person: Person) -> None:
        cookies = session_cookies.get(person.username)
        if cookies is None:
            sign_in(page, person.username, person.password)
            session_cookies[person.username] = context.cookies()
        else:
            context.add_cookies(cookies)  # type: ignore[arg-type]
            page.goto("/console/")  # where a sign-in lands

    return as_person


def open_page(page: Page, path: str) -> Response:
    """Open a console page and wait until its charts are drawn (console.js marks the
    document once every chart on it is drawn, also when there is none)."""
    response = page.goto(path)
    assert response is not None
    page.wait_for_function("document.documentElement.dataset.chartsReady === 'true'")
    return response


def screenshot(page: Page, artifacts_dir: Path, name: str) -> Path:
    path = artifacts_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
