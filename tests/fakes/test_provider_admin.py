"""Tests of the fake provider admin APIs: the official openai SDK where it has the method
(`client.admin.organization.usage.completions` / `.costs`), plain HTTP for Anthropic's
legacy usage and cost reports (the pinned anthropic SDK has no method for them)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import anthropic
import openai
import pytest
import uvicorn

from metering.simulator import create_app
from tests.fakes.provider_admin import (
    ANTHROPIC,
    OPENAI,
    FakeProviderAdmin,
    ModelPrice,
    ServedEvent,
    events_from_simulator,
)

ADMIN_KEY = "sk-admin-fake-test"
DAY = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def at(hour: int, minute: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(hours=hour, minutes=minute)


EVENTS = [
    ServedEvent(at(0, 5), "gpt-a", "key_1", 100, 50, 0, 20, 30),
    ServedEvent(at(0, 40), "gpt-a", "key_2", 10, 0, 0, 5, 0),
    ServedEvent(at(1, 10), "gpt-b", "key_1", 7, 3, 2, 4, 9),
    ServedEvent(at(4, 59), "gpt-a", "key_1", 1, 1, 0, 1, 1),
]
PRICES = {
    "gpt-a": ModelPrice(
        input=Decimal("1.234567890123456789"),
        cache_read=Decimal("0.1"),
        output=Decimal("9.87654321"),
    ),
    "gpt-b": ModelPrice(input=Decimal("3"), cache_read=Decimal("0.3"), output=Decimal("15")),
}


@pytest.fixture
def oai_fake() -> Iterator[FakeProviderAdmin]:
    with FakeProviderAdmin(OPENAI, admin_key=ADMIN_KEY, events=EVENTS, prices=PRICES) as fake:
        yield fake


@pytest.fixture
def ant_fake() -> Iterator[FakeProviderAdmin]:
    with FakeProviderAdmin(ANTHROPIC, admin_key=ADMIN_KEY, events=EVENTS, prices=PRICES) as fake:
        yield fake


def admin_client(fake: FakeProviderAdmin, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", admin_api_key=key, base_url=fake.url, max_retries=0)


def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def ant_get(fake: FakeProviderAdmin, path: str, query: list[tuple[str, str]], key: str = ADMIN_KEY):  # type: ignore[no-untyped-def]
    return get(
        f"{fake.url}{path}?{urlencode(query)}",
        {"x-api-key": key, "anthropic-version": "2023-06-01"},
    )


# ---- OpenAI through the official SDK ----------------------------------------------------------


def test_openai_usage_pages_through_hourly_buckets_grouped_by_model_and_key(
    oai_fake: FakeProviderAdmin,
) -> None:
    client = admin_client(oai_fake)
    start, end = int(at(0).timestamp()), int(at(5).timestamp())
    buckets = []
    page: str | None = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"page": page} if page else {}
        response = client.admin.organization.usage.completions(
            start_time=start,
            end_time=end,
            bucket_width="1h",
            group_by=["model", "api_key_id"],
            limit=2,
            **kwargs,
        )
        pages += 1
        buckets.extend(response.data)
        if not response.has_more:
            assert response.next_page is None
            break
        page = response.next_page
    assert pages == 3
    assert [b.start_time for b in buckets] == [start + 3600 * i for i in range(5)]
    first = buckets[0].results
    assert [(r.model, r.api_key_id) for r in first] == [("gpt-a", "key_1"), ("gpt-a", "key_2")]
    assert first[0].input_tokens == 150  # includes the cached tokens
    assert first[0].input_cached_tokens == 50
    assert first[0].output_tokens == 50  # includes reasoning
    assert first[0].num_model_requests == 1
    assert first[0].project_id is None and first[0].service_tier is None
    assert buckets[1].results[0].input_tokens == 12  # cache writes count as input
    assert buckets[2].results == [] and buckets[3].results == []
    # The SDK sends group_by[]=...; the fake saw it.
    assert ("group_by[]", "model") in oai_fake.requests[0].query
    assert "authorization" not in oai_fake.requests[0].headers


def test_openai_usage_ungrouped_has_null_group_fields_and_drop_reasoning_knob(
    oai_fake: FakeProviderAdmin,
) -> None:
    oai_fake.drop_reasoning = True
    response = admin_client(oai_fake).admin.organization.usage.completions(
        start_time=int(at(0).timestamp()), end_time=int(at(0).timestamp()) + 86400
    )
    assert len(response.data) == 1  # 1d by default
    (result,) = response.data[0].results
    assert result.model is None and result.api_key_id is None
    assert result.output_tokens == 20 + 5 + 4 + 1
    assert result.num_model_requests == 4


def test_openai_costs_amounts_keep_every_digit(oai_fake: FakeProviderAdmin) -> None:
    raw = admin_client(oai_fake).admin.organization.usage.with_raw_response.costs(
        start_time=int(at(0).timestamp()),
        end_time=int(at(0).timestamp()) + 86400,
        group_by=["line_item", "project_id"],
    )
    page = json.loads(raw.text, parse_float=Decimal)
    results = page["data"][0]["results"]
    by_item = {r["line_item"]: r["amount"]["value"] for r in results}
    expected_input = Decimal(111) * Decimal("1.234567890123456789") / 1_000_000
    assert by_item["gpt-a, input"] == expected_input
    assert len(expected_input.as_tuple().digits) > 17
    assert str(expected_input) in raw.text  # a JSON number, not a string
    assert sum(by_item.values()) == oai_fake.expected_cost()
    assert {r["project_id"] for r in results} == {"proj_default"}
    parsed = raw.parse()  # the SDK's own model accepts the shape
    assert parsed.data[0].results[0].object == "organization.costs.result"


def test_openai_wrong_key_is_a_401_in_openai_shape(oai_fake: FakeProviderAdmin) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        admin_client(oai_fake, key="sk-admin-wrong").admin.organization.usage.costs(
            start_time=int(at(0).timestamp())
        )
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_openai_failures_429_with_retry_after_then_ok(oai_fake: FakeProviderAdmin) -> None:
    oai_fake.fail_next(1, 429, retry_after="2", report="usage")
    query = urlencode({"start_time": int(at(0).timestamp()), "bucket_width": "1h"})
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    status, response_headers, body = get(
        f"{oai_fake.url}/organization/usage/completions?{query}", headers
    )
    assert status == 429
    assert response_headers["retry-after"] == "2"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    status, _, body = get(f"{oai_fake.url}/organization/usage/completions?{query}", headers)
    assert status == 200
    assert len(json.loads(body)["data"]) == 24  # the default limit at 1h


def test_fail_page_fails_only_that_page_every_time(oai_fake: FakeProviderAdmin) -> None:
    oai_fake.fail_page(2, 500)
    client = admin_client(oai_fake)
    first = client.admin.organization.usage.completions(
        start_time=int(at(0).timestamp()),
        end_time=int(at(5).timestamp()),
        bucket_width="1h",
        limit=2,
    )
    assert first.has_more and first.next_page
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.admin.organization.usage.completions(
                start_time=int(at(0).timestamp()),
                end_time=int(at(5).timestamp()),
                bucket_width="1h",
                limit=2,
                page=first.next_page,
            )


def test_openai_limit_above_maximum_is_a_400(oai_fake: FakeProviderAdmin) -> None:
    with pytest.raises(openai.BadRequestError):
        admin_client(oai_fake).admin.organization.usage.completions(
            start_time=int(at(0).timestamp()), bucket_width="1h", limit=169
        )


# ---- Anthropic over plain HTTP -------------------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True])
def test_anthropic_usage_report_shapes(ant_fake: FakeProviderAdmin, flat: bool) -> None:
    ant_fake.flat_cache_creation = flat
    ant_fake.add_usage(ServedEvent(at(1, 30), "gpt-b", "key_1", cache_write_1h=6, output=1))
    status, _, body = ant_get(
        ant_fake,
        "/organizations/usage_report/messages",
        [
            ("starting_at", "2026-11-02T00:00:00Z"),
            ("ending_at", "2026-11-02T03:00:00Z"),
            ("bucket_width", "1h"),
            ("group_by[]", "model"),
            ("group_by[]", "api_key_id"),
        ],
    )
    assert status == 200
    page = json.loads(body)
    assert page["has_more"] is False and page["next_page"] is None
    assert [b["starting_at"] for b in page["data"]] == [
        "2026-11-02T00:00:00Z",
        "2026-11-02T01:00:00Z",
        "2026-11-02T02:00:00Z",
    ]
    (second,) = page["data"][1]["results"]
    assert second["uncached_input_tokens"] == 7
    assert second["cache_read_input_tokens"] == 3
    assert second["output_tokens"] == 4 + 9 + 1
    if flat:
        assert "cache_creation" not in second
        assert second["cache_creation_5m_input_tokens"] == 2
        assert second["cache_creation_1h_input_tokens"] == 6
    else:
        assert second["cache_creation"] == {
            "ephemeral_5m_input_tokens": 2,
            "ephemeral_1h_input_tokens": 6,
        }
    assert second["model"] == "gpt-b" and second["api_key_id"] == "key_1"
    assert second["workspace_id"] is None and second["service_tier"] is None


def test_anthropic_usage_paginates_with_limit(ant_fake: FakeProviderAdmin) -> None:
    query = [
        ("starting_at", "2026-11-02T00:00:00Z"),
        ("ending_at", "2026-11-02T05:00:00Z"),
        ("bucket_width", "1h"),
        ("limit", "2"),
    ]
    starts = []
    page_token = None
    while True:
        extra = [("page", page_token)] if page_token else []
        status, _, body = ant_get(ant_fake, "/organizations/usage_report/messages", query + extra)
        assert status == 200
        page = json.loads(body)
        starts.extend(b["starting_at"] for b in page["data"])
        if not page["has_more"]:
            break
        page_token = page["next_page"]
    assert len(starts) == 5 and len(set(starts)) == 5


def test_anthropic_cost_report_cents_strings(ant_fake: FakeProviderAdmin) -> None:
    status, _, body = ant_get(
        ant_fake,
        "/organizations/cost_report",
        [
            ("starting_at", "2026-11-02T00:00:00Z"),
            ("ending_at", "2026-11-03T00:00:00Z"),
            ("group_by[]", "description"),
            ("group_by[]", "workspace_id"),
        ],
    )
    assert status == 200
    results = json.loads(body)["data"][0]["results"]
    assert all(isinstance(r["amount"], str) and r["currency"] == "USD" for r in results)
    total_cents = sum(Decimal(r["amount"]) for r in results)
    assert total_cents / 100 == ant_fake.expected_cost()
    output = next(
        r for r in results if r["model"] == "gpt-a" and r["token_type"] == "output_tokens"
    )
    assert Decimal(output["amount"]) == Decimal(50 + 5 + 2) * Decimal("9.87654321") / 10_000
    assert output["cost_type"] == "tokens" and output["workspace_id"] == "proj_default"


def test_anthropic_ungrouped_cost_has_null_details(ant_fake: FakeProviderAdmin) -> None:
    status, _, body = ant_get(
        ant_fake, "/organizations/cost_report", [("starting_at", "2026-11-02T00:00:00Z")]
    )
    assert status == 200
    (result,) = json.loads(body)["data"][0]["results"]
    assert result["model"] is None and result["description"] is None
    assert result["token_type"] is None and result["workspace_id"] is None


def test_anthropic_wrong_key_and_missing_version(ant_fake: FakeProviderAdmin) -> None:
    status, _, body = ant_get(
        ant_fake,
        "/organizations/cost_report",
        [("starting_at", "2026-11-02T00:00:00Z")],
        key="sk-ant-admin-wrong",
    )
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = get(
        f"{ant_fake.url}/organizations/cost_report?starting_at=2026-11-02T00:00:00Z",
        {"x-api-key": ADMIN_KEY},
    )
    assert status == 400


# ---- driven by what the simulator served ---------------------------------------------------------


@pytest.fixture
def simulator_url() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(), lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_events_from_the_simulators_served_log(simulator_url: str) -> None:
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    one = openai.OpenAI(base_url=f"{simulator_url}/v1", api_key="sk-up-one", max_retries=0)
    two = anthropic.Anthropic(base_url=simulator_url, api_key="sk-ant-up-two", max_retries=0)
    chat = one.chat.completions.create(model="sim-reasoner", messages=question)  # type: ignore[arg-type]
    message = two.messages.create(model="sim-thinker", max_tokens=300, messages=question)  # type: ignore[arg-type]

    events = events_from_simulator(simulator_url, key_ids={"sk-up-one": "key_one"})
    assert [e.api_key_id for e in events][0] == "key_one"
    assert events[1].api_key_id.startswith("key_") and "sk-ant" not in events[1].api_key_id
    assert chat.usage is not None and chat.usage.completion_tokens_details is not None
    reasoning = chat.usage.completion_tokens_details.reasoning_tokens or 0
    assert events[0].reasoning == reasoning
    assert events[0].output + events[0].reasoning == chat.usage.completion_tokens
    assert events[1].output + events[1].reasoning == message.usage.output_tokens

    with FakeProviderAdmin(OPENAI, admin_key=ADMIN_KEY, events=events[:1]) as fake:
        day_start = events[0].at.replace(hour=0, minute=0, second=0, microsecond=0)
        report = admin_client(fake).admin.organization.usage.completions(
            start_time=int(day_start.timestamp()), group_by=["api_key_id"], limit=1
        )
        (result,) = report.data[0].results
        assert result.api_key_id == "key_one"
        assert result.output_tokens == chat.usage.completion_tokens
        assert result.input_tokens == chat.usage.prompt_tokens
