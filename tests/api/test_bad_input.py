"""Bad input on every REST view answers 400 or 404 in the API's JSON error format
({"error": {"code", "message", "detail"}}): never a 5xx, never an HTML page.

One table: who calls, the method and path, the query or body, and the status expected.
The world the cases read is built once for the module and committed: a bad input changes
nothing, and each test's own transaction is rolled back after it anyway."""

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from billing.costs.catalogue import catalogue_load
from billing.invoicing.close import period_close
from billing.models import Invoice
from billing.plans import subscription_create
from config.celery import app
from metering.services import api_key_create
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, use, version
from tests.staff import staff_user

pytestmark = pytest.mark.django_db


def _cursor(query: str) -> str:
    """A pagination cursor as DRF encodes one: base64 of a query string."""
    return base64.b64encode(query.encode()).decode()


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The world below, built once for the module (about a second of set-up, which each
    of the hundred cases paid before) and committed; the database is flushed after the
    module, as after a transactional test. Tasks run in-process while it is built, as in
    every test (tests/conftest.py), so nothing is left on the broker."""
    with django_db_blocker.unblock():
        eager, app.conf.task_always_eager = app.conf.task_always_eager, True
        try:
            built = _world()
        finally:
            app.conf.task_always_eager = eager
    yield built
    with django_db_blocker.unblock():
        call_command("flush", verbosity=0, interactive=False, reset_sequences=False)


def _world() -> dict[str, Any]:
    """Two tenants with a closed invoice each, a tenant key for the first, a staff user,
    a published plan version with a subscription, and the accelerator catalogue."""
    standard = version("standard", base="10", output="4.00")
    invoices: list[Invoice] = []
    for name in ("acme", "globex"):
        key = ApiKeyFactory(tenant__name=name)
        subscription = subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
        use(key, datetime(2026, 9, 5, tzinfo=UTC), output_tokens=1_000, reasoning_tokens=250)
        invoices.append(
            period_close(
                tenant_id=key.tenant_id, period_start=SEP, as_of=datetime(2026, 10, 3, tzinfo=UTC)
            )
        )
    catalogue_load()
    tenant = APIClient()
    tenant.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=invoices[0].tenant).raw_key}"
    )
    staff = APIClient()
    staff.force_authenticate(staff_user("ops", "operator", "finance-write"))
    return {
        "clients": {"tenant": tenant, "staff": staff},
        "ids": {
            "invoice": invoices[0].pk,
            "other_invoice": invoices[1].pk,
            "tenant": invoices[0].tenant_id,
            "version": standard.pk,
            "plan": standard.plan_id,
            "subscription": subscription.pk,
        },
    }


HUGE = 10**30
MONTH = "2026-09"

# (id, who, method, path, query or JSON body, expected status); one case a line or two.
# fmt: off
CASES: list[tuple[str, str, str, str, dict[str, Any] | Any, int]] = [
    # --- periods: one parser, YYYY-MM within the years we can represent
    ("invoices period 9999-12", "staff", "get", "/api/v1/invoices", {"period": "9999-12"}, 400),
    ("invoices period 0000-01", "staff", "get", "/api/v1/invoices", {"period": "0000-01"}, 400),
    ("invoices period 2026-13", "tenant", "get", "/api/v1/invoices", {"period": "2026-13"}, 400),
    ("invoices period NUL", "tenant", "get", "/api/v1/invoices", {"period": "2026-\x0009"}, 400),
    ("export period 9999-12", "staff", "get", "/api/v1/invoices/export.csv",
     {"period": "9999-12"}, 400),
    ("export no period", "tenant", "get", "/api/v1/invoices/export.csv", {}, 400),
    ("export bad kind", "tenant", "get", "/api/v1/invoices/export.csv",
     {"period": MONTH, "kind": "x"}, 400),
    ("margins period 9999-12", "staff", "get", "/api/v1/finance/margins",
     {"period": "9999-12"}, 400),
    ("margins csv period 9999-12", "staff", "get", "/api/v1/finance/margins.csv",
     {"period": "9999-12"}, 400),
    ("margins bad group_by", "staff", "get", "/api/v1/finance/margins",
     {"period": MONTH, "group_by": "nope"}, 400),
    ("whatif period 9999-12", "staff", "get", "/api/v1/finance/whatif",
     {"period": "9999-12", "accelerator": "nvidia-h100-sxm"}, 400),
    # --- empty parameters (as forms send them) count as absent
    ("invoices empty parameters", "staff", "get", "/api/v1/invoices",
     {"tenant": "", "period": "", "status": ""}, 200),
    ("subscriptions empty tenant", "staff", "get", "/api/v1/subscriptions", {"tenant": ""}, 200),
    ("margins empty group_by", "staff", "get", "/api/v1/finance/margins",
     {"period": MONTH, "group_by": ""}, 200),
    ("export empty period", "tenant", "get", "/api/v1/invoices/export.csv", {"period": ""}, 400),
    # --- staff tenant selection
    ("invoices tenant not a uuid", "staff", "get", "/api/v1/invoices",
     {"tenant": "not-a-uuid"}, 400),
    ("export tenant not a uuid", "staff", "get", "/api/v1/invoices/export.csv",
     {"period": MONTH, "tenant": "not-a-uuid"}, 400),
    ("subscriptions tenant not a uuid", "staff", "get", "/api/v1/subscriptions",
     {"tenant": "not-a-uuid"}, 400),
    ("whatif tenant not a uuid", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nvidia-h100-sxm", "tenant": "not-a-uuid"}, 400),
    ("usage tenant not a uuid", "staff", "get", "/api/v1/usage/records",
     {"tenant": "not-a-uuid"}, 400),
    ("balance tenant NUL", "staff", "get", "/api/v1/balance", {"tenant": "\x00"}, 400),
    # --- pagination cursors and limits
    ("cursor garbage", "tenant", "get", "/api/v1/invoices", {"cursor": "%%%garbage"}, 404),
    ("cursor position not a number", "tenant", "get", "/api/v1/invoices",
     {"cursor": _cursor("p=abc")}, 404),
    ("cursor position huge", "tenant", "get", "/api/v1/usage/records",
     {"cursor": _cursor(f"p={HUGE}")}, 404),
    ("cursor position NUL", "tenant", "get", "/api/v1/usage/alerts",
     {"cursor": _cursor("p=1%00")}, 404),
    ("cursor offset huge", "tenant", "get", "/api/v1/balance/entries",
     {"cursor": _cursor(f"o={HUGE}&p=1")}, 404),
    ("cursor not utf-8", "tenant", "get", "/api/v1/invoices",
     {"cursor": base64.b64encode(b"\xff\xfe").decode()}, 404),
    ("limit negative", "tenant", "get", "/api/v1/invoices", {"limit": "-1"}, 200),
    ("limit huge", "tenant", "get", "/api/v1/usage/records", {"limit": str(HUGE)}, 200),
    # --- query parameters of the usage API
    ("usage since year 0", "tenant", "get", "/api/v1/usage/records", {"since": "0000-01-01"}, 400),
    ("usage since at the edge", "tenant", "get", "/api/v1/usage/records",
     {"since": "0001-01-01T00:00:00+14:00"}, 400),
    ("usage until at the edge", "tenant", "get", "/api/v1/usage/summary",
     {"until": "9999-12-31T23:59:59-14:00"}, 400),
    ("usage api_key huge", "tenant", "get", "/api/v1/usage/records", {"api_key": str(HUGE)}, 400),
    ("usage alias NUL", "tenant", "get", "/api/v1/usage/summary", {"alias": "a\x00b"}, 400),
    ("usage group_by bad", "tenant", "get", "/api/v1/usage/summary", {"group_by": "x"}, 400),
    ("series without since", "tenant", "get", "/api/v1/usage/series", {"granularity": "day"}, 400),
    ("series granularity bad", "tenant", "get", "/api/v1/usage/series",
     {"granularity": "week", "since": "2026-11-01T00:00:00Z"}, 400),
    ("series group_by day", "tenant", "get", "/api/v1/usage/series",
     {"granularity": "hour", "since": "2026-11-01T00:00:00Z", "group_by": "day"}, 400),
    ("series too many buckets", "tenant", "get", "/api/v1/usage/series",
     {"granularity": "hour", "since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400),
    ("series until at the edge", "tenant", "get", "/api/v1/usage/series",
     {"granularity": "month", "since": "9998-12-01T00:00:00Z", "until": "9999-12-31T23:00:00Z"}, 400),
    ("series since after until", "tenant", "get", "/api/v1/usage/series",
     {"granularity": "day", "since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, 400),
    ("alerts since bad", "tenant", "get", "/api/v1/usage/alerts", {"since": "yesterday"}, 400),
    ("alerts budget NUL", "tenant", "get", "/api/v1/usage/alerts", {"budget": "\x00"}, 400),
    ("invoices status bad", "tenant", "get", "/api/v1/invoices", {"status": "\x00"}, 400),
    # --- finance query numbers
    ("whatif margin NaN", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nvidia-h100-sxm", "target_margin": "NaN"}, 400),
    ("whatif margin Infinity", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nvidia-h100-sxm", "target_margin": "Infinity"}, 400),
    ("whatif margin 1e999", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nvidia-h100-sxm", "minimum_margin": "1e999"}, 400),
    ("whatif margin text", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nvidia-h100-sxm", "target_margin": "lots"}, 400),
    ("whatif unknown accelerator", "staff", "get", "/api/v1/finance/whatif",
     {"period": MONTH, "accelerator": "nope"}, 404),
    # --- ids in paths: others' and impossible ones
    ("pdf of another tenant", "tenant", "get", "/api/v1/invoices/{other_invoice}/pdf", {}, 404),
    ("detail of another tenant", "tenant", "get", "/api/v1/invoices/{other_invoice}", {}, 404),
    ("detail huge id", "tenant", "get", f"/api/v1/invoices/{HUGE}", {}, 404),
    ("pdf huge id", "staff", "get", f"/api/v1/invoices/{HUGE}/pdf", {}, 404),
    ("recompute huge id", "staff", "get", f"/api/v1/invoices/{HUGE}/recompute", {}, 404),
    ("plan version huge id", "staff", "get", f"/api/v1/plan-versions/{HUGE}", {}, 404),
    ("publish huge id", "staff", "post", f"/api/v1/plan-versions/{HUGE}/publish", {}, 404),
    ("credit note huge id", "staff", "post", f"/api/v1/invoices/{HUGE}/credit-notes",
     {"reason": "x"}, 404),
    ("change plan huge subscription", "staff", "post",
     f"/api/v1/subscriptions/{HUGE}/change-plan",
     {"plan_version": 1, "at": "2026-10-01T00:00:00Z"}, 404),
    ("plan versions huge plan", "staff", "post", f"/api/v1/plans/{HUGE}/versions", {}, 404),
    # --- JSON bodies: wrong shapes, numbers out of range, NUL
    ("quote body a list", "tenant", "post", "/api/v1/pricing/quote", [1, 2], 400),
    ("quote body a scalar", "tenant", "post", "/api/v1/pricing/quote", 7, 400),
    ("quote body null", "tenant", "post", "/api/v1/pricing/quote", None, 400),
    ("quote huge version", "tenant", "post", "/api/v1/pricing/quote",
     {"plan_version": HUGE, "usage": []}, 400),
    ("quote huge tokens", "tenant", "post", "/api/v1/pricing/quote",
     {"plan_version": "{version}",
      "usage": [{"alias": "a", "token_class": "output", "tokens": HUGE}]}, 400),
    ("quote 4000-digit tokens", "tenant", "post", "/api/v1/pricing/quote",
     {"plan_version": "{version}",
      "usage": [{"alias": "a", "token_class": "output", "tokens": 10**4000}]}, 400),
    ("quote alias NUL", "tenant", "post", "/api/v1/pricing/quote",
     {"plan_version": "{version}",
      "usage": [{"alias": "a\x00", "token_class": "output", "tokens": 1}]}, 400),
    ("credit note amount huge", "staff", "post", "/api/v1/invoices/{invoice}/credit-notes",
     {"amount_minor": HUGE, "reason": "x"}, 400),
    ("credit note reason NUL", "staff", "post", "/api/v1/invoices/{invoice}/credit-notes",
     {"reason": "\x00"}, 400),
    ("credit note body a list", "staff", "post", "/api/v1/invoices/{invoice}/credit-notes",
     [], 400),
    ("credit amount NaN", "staff", "post", "/api/v1/tenants/{tenant}/credits",
     {"kind": "top_up", "amount": "NaN", "idempotency_key": "k"}, 400),
    ("credit amount Infinity", "staff", "post", "/api/v1/tenants/{tenant}/credits",
     {"kind": "top_up", "amount": "Infinity", "idempotency_key": "k"}, 400),
    ("credit amount 1e999", "staff", "post", "/api/v1/tenants/{tenant}/credits",
     {"kind": "top_up", "amount": "1e999", "idempotency_key": "k"}, 400),
    ("credit amount huge integer", "staff", "post", "/api/v1/tenants/{tenant}/credits",
     {"kind": "top_up", "amount": HUGE, "idempotency_key": "k"}, 400),
    ("credit at year 9999", "staff", "post", "/api/v1/tenants/{tenant}/credits",
     {"kind": "grant", "amount": "1", "idempotency_key": "k",
      "effective_at": "9999-12-31T23:00:00Z", "expires_at": "9999-12-31T23:59:59Z"}, 400),
    ("balance patch a list", "staff", "patch", "/api/v1/tenants/{tenant}/balance", [True], 400),
    ("plan code NUL", "staff", "post", "/api/v1/plans", {"code": "a\x00", "name": "x"}, 400),
    ("plan version huge unit_tokens", "staff", "post", "/api/v1/plans/{plan}/versions",
     {"currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
      "components": [{"token_class": "output", "charge_model": "per_unit",
                      "unit_tokens": HUGE, "unit_price": "1"}]}, 400),
    ("plan version huge included_tokens", "staff", "post", "/api/v1/plans/{plan}/versions",
     {"currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
      "components": [{"token_class": "output", "charge_model": "per_unit",
                      "included_tokens": HUGE, "unit_price": "1"}]}, 400),
    ("plan version bad rounding", "staff", "post", "/api/v1/plans/{plan}/versions",
     {"currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
      "components": [{"token_class": "output", "charge_model": "per_unit",
                      "rounding": "ROUND_SOMETIMES", "unit_price": "1"}]}, 400),
    ("plan version year 9999", "staff", "post", "/api/v1/plans/{plan}/versions",
     {"currency": "USD", "effective_from": "9999-12-31T23:59:59Z", "components": []}, 400),
    ("subscription starts year 9999", "staff", "post", "/api/v1/subscriptions",
     {"tenant": "{tenant}", "plan_version": "{version}",
      "starts_at": "9999-12-31T23:00:00Z"}, 400),
    ("subscription huge version", "staff", "post", "/api/v1/subscriptions",
     {"tenant": "{tenant}", "plan_version": HUGE, "starts_at": "2026-10-01T00:00:00Z"}, 400),
    ("change plan at year 9999", "staff", "post",
     "/api/v1/subscriptions/{subscription}/change-plan",
     {"plan_version": "{version}", "at": "9999-12-31T23:00:00Z"}, 400),
    ("cost basis 1e999", "staff", "post", "/api/v1/accelerators/nvidia-h100-sxm/cost-basis",
     {"mode": "rented", "hourly_usd": "1e999", "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("cost basis unknown accelerator", "staff", "post", "/api/v1/accelerators/nope/cost-basis",
     {"mode": "rented", "hourly_usd": "1", "effective_from": "2026-10-01T00:00:00Z"}, 404),
    ("deployment NaN", "staff", "post", "/api/v1/deployments",
     {"alias": "a", "accelerator": "nvidia-h100-sxm", "decode_tokens_per_s": "NaN",
      "prefill_tokens_per_s": "1", "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("deployment zero throughput", "staff", "post", "/api/v1/deployments",
     {"alias": "a", "accelerator": "nvidia-h100-sxm", "decode_tokens_per_s": "0",
      "prefill_tokens_per_s": "0", "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("deployment zero utilization", "staff", "post", "/api/v1/deployments",
     {"alias": "a", "accelerator": "nvidia-h100-sxm", "decode_tokens_per_s": "10",
      "prefill_tokens_per_s": "10", "utilization": "0",
      "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("cost basis owned for zero years", "staff", "post",
     "/api/v1/accelerators/nvidia-h100-sxm/cost-basis",
     {"mode": "owned", "purchase_price_usd": "30000", "amortization_years": "0",
      "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("cost basis negative rate", "staff", "post",
     "/api/v1/accelerators/nvidia-h100-sxm/cost-basis",
     {"mode": "rented", "hourly_usd": "-1", "effective_from": "2026-10-01T00:00:00Z"}, 400),
    ("margin policy Infinity", "staff", "post",
     "/api/v1/accelerators/nvidia-h100-sxm/margin-policy",
     {"target_margin": "Infinity", "minimum_margin": "0.1",
      "effective_from": "2026-10-01T00:00:00Z"}, 400),
]
# fmt: on


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**ids) if "{" in value and "}" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _ints(value: Any) -> Any:
    """An id filled into a body ("{version}") is a string; the body wants the integer."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.isdigit() and len(value) < 12:
        return int(value)
    return value


def assert_json_error(response: Any, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    if status >= 400:
        assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
        error = json.loads(response.content)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.mark.parametrize(
    ("who", "method", "path", "data", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_a_json_client_error(
    world: dict[str, Any], who: str, method: str, path: str, data: Any, status: int
) -> None:
    client: APIClient = world["clients"][who]
    client.raise_request_exception = False  # a 500 is an answer to assert on, not a crash
    url = path.format(**world["ids"])
    if method == "get":
        query = urlencode({k: _fill(v, world["ids"]) for k, v in data.items()}, quote_via=quote)
        response = client.get(f"{url}?{query}" if query else url)
    else:
        body = json.dumps(_ints(_fill(data, world["ids"])))
        response = getattr(client, method)(url, body, content_type="application/json")
    assert_json_error(response, status)


def test_json_nested_deeper_than_the_parser_recurses_is_a_400(world: dict[str, Any]) -> None:
    client: APIClient = world["clients"]["tenant"]
    client.raise_request_exception = False
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/pricing/quote", body, content_type="application/json")
    assert_json_error(response, 400)


def test_body_without_a_content_type_is_a_json_415(world: dict[str, Any]) -> None:
    client: APIClient = world["clients"]["tenant"]
    response = client.generic("POST", "/api/v1/pricing/quote", b'{"plan_version": 1}', "")
    assert_json_error(response, 415)


@pytest.mark.parametrize(
    ("who", "path", "accept", "content_type"),
    [
        ("tenant", "/api/v1/invoices/{invoice}/pdf", "application/pdf", "application/pdf"),
        ("tenant", f"/api/v1/invoices/export.csv?period={MONTH}", "text/csv", "text/csv"),
        ("staff", f"/api/v1/finance/margins.csv?period={MONTH}", "text/csv", "text/csv"),
    ],
)
def test_files_are_served_to_clients_accepting_only_their_type(
    world: dict[str, Any], who: str, path: str, accept: str, content_type: str
) -> None:
    client: APIClient = world["clients"][who]
    response = client.get(path.format(**world["ids"]), HTTP_ACCEPT=accept)
    assert response.status_code == 200 and response["Content-Type"].startswith(content_type)


def test_a_file_of_another_tenant_is_a_json_404_whatever_is_accepted(
    world: dict[str, Any],
) -> None:
    client: APIClient = world["clients"]["tenant"]
    path = "/api/v1/invoices/{other_invoice}/pdf".format(**world["ids"])
    assert_json_error(client.get(path, HTTP_ACCEPT="application/pdf"), 404)


def test_a_query_with_too_many_fields_is_a_json_400(world: dict[str, Any]) -> None:
    client: APIClient = world["clients"]["tenant"]
    client.raise_request_exception = False
    response = client.get("/api/v1/invoices?" + "&".join(f"f{i}=1" for i in range(1_100)))
    assert_json_error(response, 400)
    assert response.json()["error"]["code"] == "too_many_fields"


# --- what Django refuses before a view runs, or when a view crashes --------------------


def _raw_client() -> Client:
    return Client(raise_request_exception=False)


def test_body_over_the_upload_limit_is_a_json_400(world: dict[str, Any], settings) -> None:  # type: ignore[no-untyped-def]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    client: APIClient = world["clients"]["tenant"]
    client.raise_request_exception = False
    body = json.dumps({"plan_version": 1, "usage": [], "pad": "x" * 2_000})
    response = client.post("/api/v1/pricing/quote", body, content_type="application/json")
    assert_json_error(response, 400)
    assert response.json()["error"]["code"] == "request_too_large"


def test_webhook_body_over_the_upload_limit_is_a_json_400(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test"
    response = _raw_client().post("/webhooks/stripe", "x" * 2_000, content_type="application/json")
    assert_json_error(response, 400)


def test_disallowed_host_is_a_json_400(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["reckon.example"]
    response = _raw_client().get("/api/v1/invoices", HTTP_HOST="evil.example")
    assert_json_error(response, 400)
    assert b"evil.example" not in response.content


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/api/v1/no-such-thing", 404),
        ("get", "/api", 404),
        ("get", "/api/v2/invoices", 404),
        ("post", "/api/v1/invoices/", 404),
        ("get", "/webhooks/paypal", 404),
        ("delete", "/api/v1/invoices", 405),
        ("put", "/api/v1/pricing/quote", 405),
        ("get", "/webhooks/stripe", 405),
    ],
)
def test_unknown_paths_and_methods_answer_json(
    world: dict[str, Any], method: str, path: str, status: int
) -> None:
    client: APIClient = world["clients"]["tenant"]
    response = getattr(client, method)(path)
    assert_json_error(response, status)


def test_paths_outside_the_api_keep_djangos_pages() -> None:
    response = _raw_client().get("/no-such-page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_a_crash_under_the_api_is_a_json_500_naming_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(**kwargs: Any) -> None:
        raise RuntimeError("connection to 10.0.0.7:5432 refused")

    monkeypatch.setattr("api.views.invoices.invoice_preview", crash)
    client: APIClient = world["clients"]["tenant"]
    client.raise_request_exception = False
    response = client.get("/api/v1/invoices/upcoming")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "internal_error"
    assert b"10.0.0.7" not in response.content and b"RuntimeError" not in response.content
