"""Bad input through the real server (uvicorn on loopback): what Django refuses before a
view runs answers the API's JSON error, never an HTML page or a 500."""

import json

import pytest

from tests.e2e.conftest import E2ETenant, http

pytestmark = pytest.mark.django_db(transaction=True)


def test_oversized_body_unknown_path_and_bad_period_answer_json(e2e: E2ETenant) -> None:
    auth = {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"}
    body = json.dumps({"plan_version": 1, "usage": [], "pad": "x" * 3_000_000}).encode()
    status, headers, data = http("POST", e2e.reckon_url + "/api/v1/pricing/quote", body, auth)
    assert (status, data["error"]["code"]) == (400, "request_too_large")  # type: ignore[index]
    assert headers["content-type"].startswith("application/json")

    status, headers, data = http("GET", e2e.reckon_url + "/api/v1/no-such-thing", None, auth)
    assert (status, data["error"]["code"]) == (404, "not_found")  # type: ignore[index]

    status, _, data = http("GET", e2e.reckon_url + "/api/v1/invoices?period=9999-12", None, auth)
    assert status == 400 and "period" in data["error"]["detail"]  # type: ignore[index]

    status, _, data = http("GET", e2e.reckon_url + "/webhooks/stripe", None, {})
    assert status == 405 and data["error"]["code"] == "method_not_allowed"  # type: ignore[index]
