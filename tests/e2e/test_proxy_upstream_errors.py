"""Upstream error answers through a real server: nothing of an upstream's body, headers
or address that could hold a secret reaches the tenant; the record keeps the status."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from metering.models import UsageRecord
from metering.services import route_set, tenant_allow_routes
from tests.e2e.conftest import SIM_KEY_ENV, E2ETenant, http
from tests.e2e.test_proxy_failures import PROMPT, wait_for

INTERNAL_HOST = "gpu-node-7.corp.internal:8443"
INTERNAL_IP = "10.20.30.40"
UPSTREAM_KEY = "sk-upstream-AbCdEf0123456789XYZ"
SECRETS = ("sim-test-key", "sk-upstream", INTERNAL_HOST, INTERNAL_IP, "corp.internal", "Bearer")


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> tuple:
    return status, "application/json", json.dumps(body).encode(), headers or {}


def _sse(events: list[str]) -> tuple:
    return 200, "text/event-stream", "".join(e + "\n\n" for e in events).encode(), {}


class FakeUpstream(BaseHTTPRequestHandler):
    """Answers by the first path segment, echoing the credential it was sent."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sent = self.headers.get("Authorization") or self.headers.get("x-api-key") or ""
        quirk = self.path.split("/")[1]
        answers = {
            "auth401": _json(
                401,
                {
                    "error": {
                        "message": f"Incorrect API key provided: {sent} ({UPSTREAM_KEY}).",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            ),
            "anthropic401": _json(
                401,
                {
                    "type": "error",
                    "error": {
                        "type": "authentication_error",
                        "message": f"invalid x-api-key {sent}",
                    },
                },
            ),
            "down500": _json(
                500, {"error": {"message": f"backend {INTERNAL_HOST} ({INTERNAL_IP}) is down"}}
            ),
            "bad400": _json(
                400,
                {
                    "error": {
                        "message": "max_tokens is too large: see https://docs.corp.internal/x "
                        f"(key {UPSTREAM_KEY}, node {INTERNAL_IP}:8000)",
                        "type": "invalid_request_error",
                        "param": "max_tokens",
                        "code": None,
                    }
                },
            ),
            "limited429": _json(
                429,
                {"error": {"message": f"Rate limit for org-secret on {INTERNAL_HOST}"}},
                {"Retry-After": "7", "x-internal-node": INTERNAL_HOST},
            ),
            "html404": (404, "text/html", f"<html>nginx at {INTERNAL_IP}</html>".encode(), {}),
            "garbage200": (200, "text/html", f"<html>proxy {INTERNAL_HOST} ok".encode(), {}),
            "stream-error": _sse(
                [
                    'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
                    '"delta":{"content":"Hi"}}]}',
                    'data: {"error":{"message":"worker ' + INTERNAL_HOST + ' crashed"}}',
                    "data: [DONE]",
                ]
            ),
            "anthropic-stream-error": _sse(
                [
                    'event: message_start\ndata: {"type":"message_start","message":{"id":"m1",'
                    '"usage":{"input_tokens":3,"output_tokens":1}}}',
                    'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                    '"message":"node ' + INTERNAL_HOST + ' overloaded"}}',
                ]
            ),
        }
        status, content_type, body, headers = answers[quirk]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-upstream-host", INTERNAL_HOST)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def routed(e2e: E2ETenant, fake_upstream: str) -> E2ETenant:
    quirks = [
        "auth401",
        "down500",
        "bad400",
        "limited429",
        "html404",
        "garbage200",
        "stream-error",
    ]
    for quirk in quirks:
        route_set(
            alias=quirk,
            provider="openai",
            base_url=f"{fake_upstream}/{quirk}/v1",
            upstream_model="m",
            api_key_env=SIM_KEY_ENV,
        )
    route_set(
        alias="anthropic401",
        provider="anthropic",
        base_url=f"{fake_upstream}/anthropic401/v1",
        upstream_model="m",
        api_key_env=SIM_KEY_ENV,
    )
    route_set(
        alias="anthropic-stream-error",
        provider="anthropic",
        base_url=f"{fake_upstream}/anthropic-stream-error/v1",
        upstream_model="m",
        api_key_env=SIM_KEY_ENV,
    )
    tenant_allow_routes(
        tenant=e2e.tenant, aliases=[*quirks, "anthropic401", "anthropic-stream-error"]
    )
    return e2e


def call(e2e: E2ETenant, alias: str, **extra: object) -> tuple[int, dict, object]:
    return http(
        "POST",
        e2e.reckon_url + "/v1/chat/completions",
        {"model": alias, "messages": PROMPT, **extra},
        {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"},
    )


def assert_clean(status: int, headers: dict, body: object) -> None:
    shown = json.dumps(body) + json.dumps(headers)
    for secret in SECRETS:
        assert secret not in shown, (secret, status, shown)


def record_of(e2e: E2ETenant, alias: str) -> UsageRecord:
    return wait_for(lambda: UsageRecord.objects.filter(tenant=e2e.tenant, alias=alias).first())


@pytest.mark.parametrize(
    ("alias", "upstream_status", "status", "code"),
    [
        ("auth401", 401, 502, "upstream_auth"),
        ("down500", 500, 502, "upstream_error"),
        ("limited429", 429, 429, "rate_limit_exceeded"),
        ("html404", 404, 404, "unknown_url"),
    ],
)
def test_upstream_errors_are_mapped_and_hide_the_upstream(
    routed: E2ETenant, alias: str, upstream_status: int, status: int, code: str
) -> None:
    got, headers, body = call(routed, alias)
    assert got == status, body
    assert isinstance(body, dict) and body["error"]["code"] == code
    assert_clean(got, headers, body)
    lowered = {name.lower(): value for name, value in headers.items()}
    assert ("retry-after" in lowered) == (status == 429)
    if status == 429:
        assert lowered["retry-after"] == "7"
    record = record_of(routed, alias)
    assert record.status == UsageRecord.Status.UPSTREAM_ERROR
    assert record.upstream_status == upstream_status
    assert set(record.flags) & {"upstream_auth_failed", "upstream_error_hidden"}


def test_a_bad_request_passes_its_message_redacted(routed: E2ETenant) -> None:
    got, headers, body = call(routed, "bad400")
    assert got == 400 and isinstance(body, dict)
    assert body["error"]["message"].startswith("max_tokens is too large")
    assert body["error"]["param"] == "max_tokens"
    assert "https://" not in body["error"]["message"]
    assert_clean(got, headers, body)


def test_the_openai_sdk_sees_a_502_without_the_upstream_credential(routed: E2ETenant) -> None:
    client = openai.OpenAI(base_url=routed.openai_base, api_key=routed.raw_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(model="auth401", messages=PROMPT)  # type: ignore[arg-type]
    assert error.value.status_code == 502
    assert "sim-test-key" not in error.value.response.text
    assert "sk-upstream" not in error.value.response.text


def test_an_anthropic_upstream_auth_failure_is_a_502_in_anthropic_format(
    routed: E2ETenant,
) -> None:
    got, headers, body = http(
        "POST",
        routed.reckon_url + "/v1/messages",
        {"model": "anthropic401", "max_tokens": 10, "messages": PROMPT},
        {"x-api-key": routed.raw_key, "Content-Type": "application/json"},
    )
    assert got == 502 and isinstance(body, dict)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert_clean(got, headers, body)


def test_an_error_event_mid_stream_is_re_expressed(routed: E2ETenant) -> None:
    got, headers, body = call(routed, "stream-error", stream=True)
    assert got == 200 and isinstance(body, str)
    assert "Hi" in body and "upstream_error" in body
    assert_clean(got, headers, body)
    assert record_of(routed, "stream-error").status == UsageRecord.Status.UPSTREAM_ERROR


def test_a_streamed_call_whose_upstream_refuses_us_gets_a_json_502(routed: E2ETenant) -> None:
    got, headers, body = call(routed, "auth401", stream=True)
    assert got == 502 and isinstance(body, dict)
    assert body["error"]["code"] == "upstream_auth"
    assert_clean(got, headers, body)


def test_an_anthropic_error_event_mid_stream_is_re_expressed(routed: E2ETenant) -> None:
    got, headers, body = http(
        "POST",
        routed.reckon_url + "/v1/messages",
        {"model": "anthropic-stream-error", "max_tokens": 10, "messages": PROMPT, "stream": True},
        {"x-api-key": routed.raw_key, "Content-Type": "application/json"},
    )
    assert got == 200 and isinstance(body, str)
    assert "event: error" in body and '"type":"api_error"' in body
    assert_clean(got, headers, body)
    record = record_of(routed, "anthropic-stream-error")
    assert record.status == UsageRecord.Status.UPSTREAM_ERROR


def test_a_200_that_is_not_the_wire_format_is_a_502_and_a_flagged_record(
    routed: E2ETenant,
) -> None:
    got, headers, body = call(routed, "garbage200")
    assert got == 502 and isinstance(body, dict), body
    assert body["error"]["code"] == "upstream_error"
    assert_clean(got, headers, body)
    record = record_of(routed, "garbage200")
    assert record.status == UsageRecord.Status.UPSTREAM_ERROR
    assert record.upstream_status == 200
    assert record.flags == ["unparseable_response"]  # held back from rating, for review
