"""Failure paths through a real server: bad input, dead upstreams, cut streams,
clients that leave mid-stream, revoked keys."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import anthropic
import openai
import pytest

from metering.models import Route, UsageRecord
from metering.services import api_key_create, api_key_revoke, route_set, tenant_allow_routes
from tests.e2e.conftest import SIM_KEY_ENV, E2ETenant, free_port, http

PROMPT = [{"role": "user", "content": "Think hard about prime gaps."}]


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def chat(
    e2e: E2ETenant, body: object, headers: dict | None = None, path: str = "/v1/chat/completions"
):  # type: ignore[no-untyped-def]
    hdrs = {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"}
    hdrs.update(headers or {})
    return http("POST", e2e.reckon_url + path, body, hdrs)


def test_missing_key_gets_provider_shaped_401(e2e: E2ETenant) -> None:
    status, _, body = http(
        "POST",
        e2e.reckon_url + "/v1/chat/completions",
        {"model": "reasoner"},
        {"Content-Type": "application/json"},
    )
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, body = http(
        "POST",
        e2e.reckon_url + "/v1/messages",
        {"model": "thinker"},
        {"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert status == 401 and body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }


def test_sdks_raise_their_own_auth_errors_for_unknown_keys(e2e: E2ETenant) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=e2e.openai_base, api_key="rk_not_a_real_key_000000000", max_retries=0
        ).chat.completions.create(model="reasoner", messages=PROMPT)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            base_url=e2e.reckon_url, api_key="rk_not_a_real_key_000000000", max_retries=0
        ).messages.create(model="thinker", max_tokens=10, messages=PROMPT)


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", {}, 400, "Malformed JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        ({"messages": PROMPT}, {}, 400, "'model' is required"),
        ({"model": "no-such-alias", "messages": PROMPT}, {}, 404, "does not exist"),
        ({"model": "thinker", "messages": PROMPT}, {}, 400, "not served on this endpoint"),
        ({"model": "reasoner", "stream": "yes"}, {}, 400, "'stream' must be a boolean"),
        ({"model": "reasoner"}, {"Content-Type": "text/plain"}, 415, "application/json"),
        (b"{" + b" " * (9 * 1024 * 1024) + b"}", {}, 413, "exceeds"),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-model",
        "unknown-alias",
        "wrong-endpoint",
        "bad-stream",
        "content-type",
        "oversized",
    ],
)
def test_bad_input_gets_a_clear_openai_error_and_records_nothing(
    e2e: E2ETenant, body, headers, status, fragment
) -> None:  # type: ignore[no-untyped-def]
    got_status, _, got = chat(e2e, body, headers)
    assert got_status == status
    assert fragment in got["error"]["message"]
    assert set(got["error"]) == {"message", "type", "param", "code"}
    assert UsageRecord.objects.count() == 0


def test_bad_input_on_messages_uses_anthropic_shape(e2e: E2ETenant) -> None:
    status, _, body = chat(
        e2e, {"model": "nope", "max_tokens": 5, "messages": PROMPT}, path="/v1/messages"
    )
    assert status == 404
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(
            base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0
        ).messages.create(model="nope", max_tokens=5, messages=PROMPT)
    assert UsageRecord.objects.count() == 0


def test_revoked_key_stops_working_within_seconds(e2e: E2ETenant) -> None:
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    client.chat.completions.create(model="reasoner", messages=PROMPT)
    api_key = e2e.tenant.api_keys.get()
    api_key_revoke(api_key=api_key)
    revoked_at = time.monotonic()
    answered_after = []  # seconds after the revocation that answered calls started

    def refused() -> bool:
        started = time.monotonic() - revoked_at
        try:
            client.chat.completions.create(model="reasoner", messages=PROMPT)
        except openai.AuthenticationError:
            return True
        answered_after.append(started)
        return False

    wait_for(refused, timeout=10)
    # The server's caller cache serves nothing older than its ttl (0.5 s here): a call
    # that starts later is refused, however long each call takes on a loaded machine.
    assert all(started < 0.5 for started in answered_after), answered_after


def test_expired_key_is_refused(e2e: E2ETenant) -> None:
    created = api_key_create(tenant=e2e.tenant, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=created.raw_key, max_retries=0)
    client.chat.completions.create(model="reasoner", messages=PROMPT)
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="reasoner", messages=PROMPT)


def test_upstream_error_is_passed_through_and_recorded_unbilled(e2e: E2ETenant) -> None:
    route_set(
        alias="broken",
        provider="openai",
        base_url=e2e.simulator_url + "/v1",
        upstream_model="sim-error-500",
        api_key_env=SIM_KEY_ENV,
    )
    tenant_allow_routes(tenant=e2e.tenant, aliases=["broken"])
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(
            base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0
        ).chat.completions.create(model="broken", messages=PROMPT)
    row = UsageRecord.objects.get(alias="broken")
    assert (row.status, row.upstream_status) == ("upstream_error", 500)
    assert row.input_tokens == row.output_tokens == row.reasoning_tokens == 0


def test_unreachable_upstream_gets_502_in_wire_format_and_a_failed_record(e2e: E2ETenant) -> None:
    route_set(
        alias="dead",
        provider="anthropic",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        upstream_model="x",
    )
    tenant_allow_routes(tenant=e2e.tenant, aliases=["dead"])
    status, headers, body = chat(
        e2e, {"model": "dead", "max_tokens": 5, "messages": PROMPT}, path="/v1/messages"
    )
    assert status == 502 and body["error"]["type"] == "api_error"
    row = UsageRecord.objects.get(alias="dead")
    assert row.status == "failed" and str(row.request_id) == headers["x-reckon-request-id"]


def test_cut_stream_is_recorded_incomplete(e2e: E2ETenant) -> None:
    route_set(
        alias="cut",
        provider="openai",
        base_url=e2e.simulator_url + "/v1",
        upstream_model="sim-cut-stream",
        api_key_env=SIM_KEY_ENV,
    )
    tenant_allow_routes(tenant=e2e.tenant, aliases=["cut"])
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    try:
        list(client.chat.completions.create(model="cut", messages=PROMPT, stream=True))
    except openai.APIError:
        pass  # the SDK may or may not notice the missing [DONE]
    row = wait_for(lambda: UsageRecord.objects.filter(alias="cut").first())
    assert row.status == "incomplete"
    assert "missing_usage" in row.flags


async def _read_then_disconnect(url: str, key: str, path: str, body: dict, headers: dict) -> bytes:
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            url + path, json=body, headers={"Authorization": f"Bearer {key}", **headers}
        )
        assert response.status == 200
        first = await response.content.readany()
        response.close()  # the client goes away mid-stream
        return first


@pytest.mark.parametrize(
    ("alias", "path", "extra"),
    [
        ("slow-reasoner", "/v1/chat/completions", {"reasoning_effort": "medium"}),
        (
            "slow-thinker",
            "/v1/messages",
            {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        ),
    ],
)
def test_client_disconnect_mid_stream_still_records_final_usage(
    e2e: E2ETenant, alias: str, path: str, extra: dict
) -> None:
    body = {"model": alias, "messages": PROMPT, "stream": True, **extra}
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    first = asyncio.run(_read_then_disconnect(e2e.reckon_url, e2e.raw_key, path, body, headers))
    assert first  # the stream had started
    row = wait_for(lambda: UsageRecord.objects.filter(alias=alias).first(), timeout=30)
    slow_url = Route.objects.get(alias=alias, alias__tenants=e2e.tenant).base_url.removesuffix(
        "/v1"
    )
    totals = http("GET", slow_url + "/_sim/totals")[2]
    assert row.client_disconnected and row.status == "completed"
    assert row.reasoning_tokens == totals["reasoning_tokens"] > 0
    assert row.output_tokens == totals["output_tokens"] > 0
