"""Helpers of the console's tests: members signed in through the real sign-in, tenant API
clients, a chart's embedded JSON and the `data-*` values a page shows (the numbers the
tests compare with the REST API)."""

import json
import re
from typing import Any

from django.test import Client
from rest_framework.test import APIClient

from metering.services import api_key_create, tenant_member_set


def member_client(tenant: Any, username: str, role: str = "developer") -> Client:
    """A browser-like client signed in (with its password) as a new member of `tenant`."""
    created = tenant_member_set(tenant=tenant, username=username, role=role)
    client = Client(HTTP_HOST="127.0.0.1")
    assert client.login(username=username, password=created.password)
    return client


def key_client(raw_key: str) -> APIClient:
    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def tenant_api(tenant: Any) -> APIClient:
    """The REST API as the tenant sees it (a fresh key of its own)."""
    return key_client(api_key_create(tenant=tenant, name="rest").raw_key)


def csrf_client(client: Client) -> Client:
    """The same session, with CSRF checks on (as a browser meets them)."""
    strict = Client(HTTP_HOST="127.0.0.1", enforce_csrf_checks=True)
    strict.cookies = client.cookies
    return strict


def attr_values(html: str, attr: str, within_id: str | None = None) -> list[str]:
    """Every `attr="..."` value in `html` (or in the element with id `within_id` up to its
    closing tag of the same name), in document order."""
    if within_id is not None:
        match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(within_id)}"', html)
        assert match, f"no element #{within_id}"
        tag = match.group(1)
        end = html.index(f"</{tag}>", match.end()) if tag != "table" else _table_end(html, match)
        html = html[match.start() : end]
    return re.findall(rf'\b{re.escape(attr)}="([^"]*)"', html)


def _table_end(html: str, match: re.Match[str]) -> int:
    """The end of a table that may hold nested tables."""
    depth, position = 0, match.start()
    for tag in re.finditer(r"<(/?)table\b", html[match.start() :]):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return match.start() + tag.start()
        position = tag.end()
    raise AssertionError(f"unclosed table at {position}")


def chart_data(html: str, chart_id: str) -> dict[str, Any]:
    """The JSON a chart is drawn from (`<script id="chart-data-<id>">`)."""
    match = re.search(
        rf'<script id="chart-data-{re.escape(chart_id)}" type="application/json">(.*?)</script>',
        html,
        re.S,
    )
    assert match, f"no chart {chart_id}"
    return json.loads(match.group(1))  # type: ignore[no-any-return]
