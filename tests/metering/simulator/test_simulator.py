"""The simulator on a real socket, driven by the official openai and anthropic SDKs.

No Django: run with `pytest -p no:django tests/metering/simulator`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import uvicorn

from metering.simulator import app as app_module
from metering.simulator import create_app, engine
from metering.simulator.app import Simulator, create_app_from_env, credential_fingerprint
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
QUESTION = [{"role": "user", "content": "Why is the sky blue? Answer briefly."}]
LONG_TEXT = "All work and no play makes Jack a dull boy. " * 200  # ~2200 tokens


class Server:
    def __init__(self, app: Simulator) -> None:
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload, headers=headers or {})
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    def totals(self) -> dict[str, Any]:
        status, _, body = self.request("GET", "/_sim/totals")
        assert status == 200
        return json.loads(body)


@pytest.fixture(autouse=True)
def _fast_auth_cache() -> None:
    """Shadows the Django-only autouse fixture of tests/conftest.py: these tests run without Django."""


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server(create_app())
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reset(server: Server) -> None:
    status, _, _ = server.request("POST", "/_sim/reset")
    assert status == 200


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=20)


@pytest.fixture
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base, api_key="x", max_retries=0, timeout=20)


def quirk_client(server: Server, quirk: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base}/quirks/{quirk}/v1", api_key="x", max_retries=0, timeout=20
    )


def sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((event, "\n".join(data)))
    return events


AUTH = {"authorization": "Bearer x", "content-type": "application/json"}


# ---- OpenAI Chat Completions ------------------------------------------------------------


def test_chat_completion_usage_and_text_follow_the_engine(oai: openai.OpenAI) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION, "reasoning_effort": "high"}
    expected = engine.plan_chat_completion(body)

    completion = oai.chat.completions.create(**body)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "sim-reasoner"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.message.content == expected.visible_text
    assert len(choice.message.content.split(" ")) == expected.visible_tokens
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == expected.prompt_tokens
    assert usage.completion_tokens == expected.reasoning_tokens + expected.visible_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == expected.reasoning_tokens > 0
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_with_usage_matches_the_non_stream_answer(
    server: Server, oai: openai.OpenAI
) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION}
    plain = oai.chat.completions.create(**body)

    chunks = list(
        oai.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *deltas, finish, usage_chunk = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage == plain.usage
    content = [chunk.choices[0].delta.content for chunk in deltas[1:]]
    assert "".join(content) == plain.choices[0].message.content
    assert plain.usage is not None
    visible = plain.usage.completion_tokens - plain.usage.completion_tokens_details.reasoning_tokens
    assert len(content) == visible  # one delta per token

    status, headers, raw = server.request(
        "POST",
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
        AUTH,
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-request-id"].startswith("req_")
    events = sse(raw)
    assert events[-1] == (None, "[DONE]")
    assert all('"usage":null' in data for _, data in events[:-2])


def test_chat_stream_without_include_usage_sends_no_usage(server: Server) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION, "stream": True}
    status, _, raw = server.request("POST", "/v1/chat/completions", body, AUTH)
    assert status == 200
    events = sse(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_same_request_same_answer_and_reasoning_grows_with_effort(oai: openai.OpenAI) -> None:
    def ask(effort: str, model: str = "sim-reasoner") -> Any:
        return oai.chat.completions.create(model=model, messages=QUESTION, reasoning_effort=effort)

    first, again = ask("medium"), ask("medium")
    assert first.usage == again.usage
    assert first.choices[0].message.content == again.choices[0].message.content

    by_effort = {effort: ask(effort) for effort in ("minimal", "low", "medium", "high")}
    reasoning = [r.usage.completion_tokens_details.reasoning_tokens for r in by_effort.values()]
    assert reasoning == sorted(reasoning)
    assert len(set(reasoning)) == 4
    assert (
        reasoning[-1] >= 7 * by_effort["high"].usage.completion_tokens // 10
    )  # high ~ 10x the answer
    answers = {r.choices[0].message.content for r in by_effort.values()}
    assert len(answers) == 1  # the effort changes the thinking, not the answer

    silent = ask("high", model="sim-mini-noreason")
    assert silent.usage.completion_tokens_details.reasoning_tokens == 0
    assert silent.usage.completion_tokens == len(silent.choices[0].message.content.split(" "))


def test_max_completion_tokens_caps_reasoning_first(oai: openai.OpenAI) -> None:
    full = oai.chat.completions.create(
        model="sim-reasoner", messages=QUESTION, reasoning_effort="high"
    )
    reasoning = full.usage.completion_tokens_details.reasoning_tokens

    partial = oai.chat.completions.create(
        model="sim-reasoner",
        messages=QUESTION,
        reasoning_effort="high",
        max_completion_tokens=reasoning + 3,
    )
    assert partial.choices[0].finish_reason == "length"
    assert partial.usage.completion_tokens == reasoning + 3
    assert partial.usage.completion_tokens_details.reasoning_tokens == reasoning
    assert len(partial.choices[0].message.content.split(" ")) == 3

    starved = oai.chat.completions.create(
        model="sim-reasoner", messages=QUESTION, reasoning_effort="high", max_tokens=reasoning - 1
    )
    assert starved.choices[0].finish_reason == "length"
    assert (
        starved.usage.completion_tokens == starved.usage.completion_tokens_details.reasoning_tokens
    )
    assert starved.choices[0].message.content == ""


def test_long_prompts_report_cached_tokens(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": LONG_TEXT}, *QUESTION]
    completion = oai.chat.completions.create(model="sim-reasoner", messages=messages)
    prompt = completion.usage.prompt_tokens
    assert (
        prompt
        == engine.plan_chat_completion(
            {"model": "sim-reasoner", "messages": messages}
        ).prompt_tokens
    )
    assert completion.usage.prompt_tokens_details.cached_tokens == (prompt - 1) // 128 * 128 >= 1024


# ---- OpenAI Responses -------------------------------------------------------------------


def test_responses_non_stream(oai: openai.OpenAI) -> None:
    body = {
        "model": "sim-reasoner",
        "input": "Why is the sky blue?",
        "reasoning": {"effort": "low"},
    }
    expected = engine.plan_response(body)

    response = oai.responses.create(**body)

    assert response.object == "response"
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text == expected.visible_text
    assert response.reasoning is not None
    assert response.reasoning.effort == "low"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == expected.prompt_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens == expected.reasoning_tokens + expected.visible_tokens
    assert usage.output_tokens_details.reasoning_tokens == expected.reasoning_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_responses_stream_events(server: Server, oai: openai.OpenAI) -> None:
    body = {"model": "sim-reasoner", "input": [{"role": "user", "content": "Why is the sky blue?"}]}
    plain = oai.responses.create(**body)

    events = list(oai.responses.create(**body, stream=True))

    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in deltas) == plain.output_text
    assert (
        len(deltas)
        == plain.usage.output_tokens - plain.usage.output_tokens_details.reasoning_tokens
    )
    assert events[-1].response.usage == plain.usage
    assert events[0].response.usage is None

    with oai.responses.stream(**body) as stream:
        final = stream.get_final_response()
    assert final.output_text == plain.output_text
    assert final.usage == plain.usage

    status, headers, raw = server.request("POST", "/v1/responses", {**body, "stream": True}, AUTH)
    assert headers["content-type"] == "text/event-stream"
    for event, data in sse(raw):
        assert event == json.loads(data)["type"]
    assert b"[DONE]" not in raw


def test_responses_max_output_tokens_makes_it_incomplete(oai: openai.OpenAI) -> None:
    body = {"model": "sim-reasoner", "input": "Why is the sky blue?", "max_output_tokens": 40}
    assert engine.plan_response(body).truncated

    response = oai.responses.create(**body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 40

    events = list(oai.responses.create(**body, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.usage == response.usage


# ---- Anthropic Messages -----------------------------------------------------------------


def test_messages_with_thinking(claude: anthropic.Anthropic) -> None:
    body = {
        "model": "sim-thinker",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": QUESTION,
    }
    expected = engine.plan_message(body)

    message = claude.messages.create(**body)

    assert message.type == "message"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == expected.reasoning_text
    assert thinking.signature
    assert text.type == "text"
    assert text.text == expected.visible_text
    usage = message.usage
    assert usage.input_tokens == expected.prompt_tokens
    assert usage.cache_creation_input_tokens == 0
    assert usage.cache_read_input_tokens == 0
    assert usage.cache_creation is not None
    assert usage.output_tokens == expected.reasoning_tokens + expected.visible_tokens
    assert usage.output_tokens_details is not None
    assert 0 < usage.output_tokens_details.thinking_tokens == expected.reasoning_tokens <= 2048

    bigger = claude.messages.create(
        **{**body, "thinking": {"type": "enabled", "budget_tokens": 3000}}
    )
    assert (
        bigger.usage.output_tokens_details.thinking_tokens
        > usage.output_tokens_details.thinking_tokens
    )
    assert bigger.content[1].text == text.text

    plain = claude.messages.create(model="sim-thinker", max_tokens=1024, messages=QUESTION)
    assert [block.type for block in plain.content] == ["text"]
    assert plain.usage.output_tokens_details.thinking_tokens == 0
    assert plain.usage.output_tokens == expected.visible_tokens


def test_messages_stream(server: Server, claude: anthropic.Anthropic) -> None:
    body = {
        "model": "sim-thinker",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": QUESTION,
    }
    plain = claude.messages.create(**body)

    with claude.messages.stream(**body) as stream:
        final = stream.get_final_message()

    def blocks(message: Any) -> list[dict[str, Any]]:
        return [block.to_dict(exclude_none=True) for block in message.content]

    assert blocks(final) == blocks(plain)
    assert final.usage == plain.usage
    assert final.stop_reason == "end_turn"

    status, headers, raw = server.request("POST", "/v1/messages", {**body, "stream": True}, AUTH)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    events = [(event, json.loads(data)) for event, data in sse(raw)]
    assert all(event == data["type"] for event, data in events)
    names = [event for event, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_delta") == 1
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage["output_tokens"] == 1
    assert start_usage["input_tokens"] == plain.usage.input_tokens
    assert "output_tokens_details" not in start_usage
    delta_usage = events[-2][1]["usage"]
    assert delta_usage["output_tokens"] == plain.usage.output_tokens
    assert delta_usage["output_tokens_details"] == {
        "thinking_tokens": plain.usage.output_tokens_details.thinking_tokens
    }
    kinds = [data["delta"]["type"] for event, data in events if event == "content_block_delta"]
    assert kinds.count("thinking_delta") == plain.usage.output_tokens_details.thinking_tokens
    assert kinds.count("signature_delta") == 1
    assert (
        kinds.count("text_delta")
        == plain.usage.output_tokens - plain.usage.output_tokens_details.thinking_tokens
    )


def test_messages_max_tokens_includes_thinking(claude: anthropic.Anthropic) -> None:
    # Adaptive thinking has no budget below max_tokens, so max_tokens can cut into the answer.
    body = {
        "model": "sim-thinker",
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
        "messages": QUESTION,
    }
    thinking = engine.plan_message({**body, "max_tokens": 8000}).reasoning_tokens
    assert thinking > 0

    message = claude.messages.create(**body, max_tokens=thinking + 2)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == thinking + 2
    assert message.usage.output_tokens_details.thinking_tokens == thinking
    assert message.content[1].text.count(" ") == 1

    omitted = claude.messages.create(
        **{**body, "thinking": {**body["thinking"], "display": "omitted"}}, max_tokens=8000
    )
    assert omitted.content[0].thinking == ""
    assert omitted.usage.output_tokens_details.thinking_tokens == thinking


@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_messages_prompt_cache(claude: anthropic.Anthropic, ttl: str) -> None:
    system = [
        {"type": "text", "text": LONG_TEXT, "cache_control": {"type": "ephemeral", "ttl": ttl}}
    ]
    body = {"model": "sim-thinker", "max_tokens": 1024, "system": system, "messages": QUESTION}
    expected = engine.plan_message(body)
    # The cached prefix: request overhead + system message overhead + the system text.
    prefix = (
        engine.REQUEST_OVERHEAD_TOKENS
        + engine.MESSAGE_OVERHEAD_TOKENS
        + engine.tokens_for_text(LONG_TEXT)
    )

    usage = claude.messages.create(**body).usage
    again = claude.messages.create(**body).usage

    assert usage == again
    assert usage.cache_read_input_tokens + usage.cache_creation_input_tokens == prefix
    assert usage.input_tokens + prefix == expected.prompt_tokens
    assert usage.cache_creation_input_tokens == expected.cache_write_tokens
    assert usage.cache_read_input_tokens == expected.cached_tokens
    one_hour = usage.cache_creation.ephemeral_1h_input_tokens
    five_minutes = usage.cache_creation.ephemeral_5m_input_tokens
    assert one_hour + five_minutes == usage.cache_creation_input_tokens
    assert (one_hour if ttl == "5m" else five_minutes) == 0


def test_anthropic_cache_read_or_write_depends_on_the_prefix() -> None:
    outcomes = set()
    for n in range(16):
        system = [
            {"type": "text", "text": f"{n} {LONG_TEXT}", "cache_control": {"type": "ephemeral"}}
        ]
        plan = engine.plan_message(
            {"model": "m", "max_tokens": 10, "system": system, "messages": QUESTION}
        )
        outcomes.add((plan.cached_tokens > 0, plan.cache_write_tokens > 0))
    assert outcomes == {(True, False), (False, True)}


# ---- errors, auth, faults -----------------------------------------------------------------


def test_fault_models_answer_in_provider_formats(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.InternalServerError) as server_error:
        oai.chat.completions.create(model="sim-error-500", messages=QUESTION)
    assert server_error.value.status_code == 500
    assert server_error.value.body["type"] == "server_error"

    with pytest.raises(openai.RateLimitError) as rate_limited:
        oai.responses.create(model="sim-error-429", input="hi")
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert rate_limited.value.body["code"] == "rate_limit_exceeded"

    with pytest.raises(anthropic.RateLimitError) as claude_limited:
        claude.messages.create(model="sim-error-429", max_tokens=100, messages=QUESTION)
    assert claude_limited.value.response.headers["retry-after"] == "1"
    assert claude_limited.value.body["error"]["type"] == "rate_limit_error"

    with pytest.raises(anthropic.InternalServerError) as claude_error:
        claude.messages.create(
            model="sim-error-500", max_tokens=100, messages=QUESTION, stream=True
        )
    assert claude_error.value.body["type"] == "error"


def test_bad_requests(server: Server) -> None:
    status, _, raw = server.request("POST", "/v1/chat/completions", b"{not json", AUTH)
    assert status == 400
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"

    status, _, raw = server.request("POST", "/v1/messages", b"[1, 2", AUTH)
    assert status == 400
    assert json.loads(raw)["type"] == "error"
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"

    status, _, raw = server.request(
        "POST", "/v1/messages", {"model": "m", "messages": QUESTION}, AUTH
    )
    assert status == 400
    assert "max_tokens" in json.loads(raw)["error"]["message"]

    status, _, raw = server.request(
        "POST",
        "/v1/chat/completions",
        {"model": "m", "messages": QUESTION, "reasoning_effort": "huge"},
        AUTH,
    )
    assert status == 400
    assert json.loads(raw)["error"]["param"] == "reasoning_effort"

    status, _, raw = server.request("POST", "/v1/nothing-here", {}, AUTH)
    assert status == 404
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_a_credential_is_required_but_any_value_works(server: Server) -> None:
    body = {"model": "m", "max_tokens": 50, "messages": QUESTION}
    status, _, raw = server.request(
        "POST", "/v1/messages", body, {"content-type": "application/json"}
    )
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "authentication_error"

    status, _, raw = server.request(
        "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
    )
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"

    for header in ({"x-api-key": "anything"}, {"authorization": "Bearer anything"}):
        status, headers, _ = server.request("POST", "/v1/messages", body, header)
        assert status == 200
        assert headers["request-id"] == headers["x-request-id"]


def test_models_lists(server: Server, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    ids = [model.id for model in oai.models.list()]
    assert "sim-reasoner" in ids
    assert [model.id for model in quirk_client(server, "vllm").models.list()] == ids
    assert [model.id for model in claude.models.list()] == ids
    status, _, raw = server.request("GET", "/_sim/health")
    assert status == 200


# ---- cut streams, disconnects, totals -----------------------------------------------------


def test_cut_stream_drops_the_connection_but_counts_usage(
    server: Server, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    body = {"model": "sim-cut-stream", "messages": QUESTION}
    expected = engine.plan_chat_completion(body)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}
        ):
            assert chunk.usage is None
            received.extend(
                choice.delta.content for choice in chunk.choices if choice.delta.content
            )
    assert len(received) == expected.visible_tokens // 2

    message_body = {"model": "sim-cut-stream", "max_tokens": 500, "messages": QUESTION}
    # The anthropic SDK lets the transport error through unwrapped.
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        with claude.messages.stream(**message_body) as stream:
            for _ in stream:
                pass

    totals = server.totals()
    assert totals["requests"] == 2
    assert totals["by_endpoint"]["/v1/chat/completions"]["output_tokens"] == expected.visible_tokens
    assert (
        totals["by_endpoint"]["/v1/chat/completions"]["reasoning_tokens"]
        == expected.reasoning_tokens
    )
    assert (
        totals["by_endpoint"]["/v1/messages"]["output_tokens"]
        == engine.plan_message(message_body).visible_tokens
    )


def test_usage_is_counted_when_the_client_disconnects_mid_stream(server: Server) -> None:
    body = {
        "model": "sim-reasoner",
        "messages": QUESTION,
        "reasoning_effort": "low",
        "stream": True,
    }
    expected = engine.plan_chat_completion(body)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body).encode(),
        headers={**AUTH, "x-sim-token-delay-ms": "5"},
    )
    response = connection.getresponse()
    assert response.status == 200
    response.read1(64)  # the role chunk arrives at once; the rest takes ~5 ms per token
    connection.close()
    assert server.totals()["requests"] == 0  # still generating

    deadline = time.monotonic() + 10
    while (totals := server.totals())["requests"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert totals["output_tokens"] == expected.visible_tokens
    assert totals["reasoning_tokens"] == expected.reasoning_tokens


def test_totals_reconcile_with_what_the_sdks_saw(
    server: Server, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    seen = {
        path: [0, 0, 0, 0, 0, 0]
        for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages")
    }

    def add(
        path: str, uncached: int, cached: int, written: int, visible: int, reasoning: int
    ) -> None:
        row = seen[path]
        for i, value in enumerate((1, uncached, cached, written, visible, reasoning)):
            row[i] += value

    def add_openai(path: str, usage: Any, input_field: str, output_field: str) -> None:
        """An OpenAI usage: its input count includes the cached tokens and its output count
        the reasoning tokens (`prompt_tokens` and `completion_tokens` in chat completions,
        `input_tokens` and `output_tokens` in responses, each with its `_details`)."""
        cached = getattr(usage, f"{input_field}_details").cached_tokens
        reasoning = getattr(usage, f"{output_field}_details").reasoning_tokens
        uncached = getattr(usage, input_field) - cached
        add(path, uncached, cached, 0, getattr(usage, output_field) - reasoning, reasoning)

    def add_chat(usage: Any) -> None:
        add_openai("/v1/chat/completions", usage, "prompt_tokens", "completion_tokens")

    long_messages = [{"role": "system", "content": LONG_TEXT}, *QUESTION]
    for messages in (QUESTION, long_messages):
        for effort in ("low", "high"):
            add_chat(
                oai.chat.completions.create(
                    model="sim-reasoner", messages=messages, reasoning_effort=effort
                ).usage
            )
            stream = oai.chat.completions.create(
                model="sim-reasoner",
                messages=messages,
                reasoning_effort=effort,
                stream=True,
                stream_options={"include_usage": True},
            )
            add_chat([chunk for chunk in stream][-1].usage)

        for stream in (False, True):
            if stream:
                events = list(
                    oai.responses.create(model="sim-reasoner", input=messages, stream=True)
                )
                usage = events[-1].response.usage
            else:
                usage = oai.responses.create(model="sim-reasoner", input=messages).usage
            add_openai("/v1/responses", usage, "input_tokens", "output_tokens")

    system = [{"type": "text", "text": LONG_TEXT, "cache_control": {"type": "ephemeral"}}]
    for n in range(3):
        body = {
            "model": "sim-thinker",
            "max_tokens": 3000,
            "system": [{**system[0], "text": f"{n} {LONG_TEXT}"}],
            "thinking": {"type": "enabled", "budget_tokens": 1500},
            "messages": QUESTION,
        }
        with claude.messages.stream(**body) as stream:
            streamed = stream.get_final_message().usage
        for usage in (claude.messages.create(**body).usage, streamed):
            thinking = usage.output_tokens_details.thinking_tokens
            add(
                "/v1/messages",
                usage.input_tokens,
                usage.cache_read_input_tokens,
                usage.cache_creation_input_tokens,
                usage.output_tokens - thinking,
                thinking,
            )

    totals = server.totals()
    fields = [
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
    ]
    for path, row in seen.items():
        assert totals["by_endpoint"][path] == dict(zip(fields, row, strict=True))
    for i, field in enumerate(fields):
        assert totals[field] == sum(row[i] for row in seen.values())
    assert totals["cached_input_tokens"] > 0

    status, _, raw = server.request("POST", "/_sim/reset")
    assert status == 200
    assert json.loads(raw)["requests"] == 0
    assert server.totals()["requests"] == 0


def test_served_log_lists_each_counted_generation_with_a_key_fingerprint(
    server: Server, claude: anthropic.Anthropic
) -> None:
    key_a, key_b = "sk-upstream-a-secret", "sk-ant-upstream-b-secret"
    oai_a = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key_a, max_retries=0, timeout=20)
    claude_b = anthropic.Anthropic(base_url=server.base, api_key=key_b, max_retries=0, timeout=20)
    chat = {"model": "sim-reasoner", "messages": QUESTION, "reasoning_effort": "low"}
    message = {"model": "sim-thinker", "max_tokens": 500, "messages": QUESTION}
    oai_a.chat.completions.create(**chat)
    claude_b.messages.create(**message)
    status, _, _ = server.request(
        "POST", "/v1/chat/completions", {"model": "sim-error-500", "messages": QUESTION}, AUTH
    )
    assert status == 500  # errors are not served generations

    status, _, raw = server.request("GET", "/_sim/served")
    assert status == 200
    assert key_a.encode() not in raw and key_b.encode() not in raw
    log = json.loads(raw)
    assert log["total"] == 2 and log["dropped"] == 0
    first, second = log["served"]
    planned_chat = engine.plan_chat_completion(chat)
    assert first["model"] == "sim-reasoner"
    assert first["endpoint"] == "/v1/chat/completions"
    assert first["key_fingerprint"] == hashlib.sha256(key_a.encode()).hexdigest()[:16]
    assert first["reasoning_tokens"] == planned_chat.reasoning_tokens
    assert first["output_tokens"] == planned_chat.visible_tokens
    assert first["input_tokens"] == planned_chat.uncached_input_tokens
    assert first["finished_at"].endswith("+00:00")
    assert second["endpoint"] == "/v1/messages"
    assert second["key_fingerprint"] == hashlib.sha256(key_b.encode()).hexdigest()[:16]
    assert second["output_tokens"] == engine.plan_message(message).visible_tokens
    assert credential_fingerprint(b"Bearer " + key_a.encode()) == first["key_fingerprint"]
    served_sum = sum(entry["cached_input_tokens"] for entry in log["served"])
    assert served_sum == server.totals()["cached_input_tokens"]

    server.request("POST", "/_sim/reset")
    status, _, raw = server.request("GET", "/_sim/served")
    assert json.loads(raw) == {"served": [], "total": 0, "dropped": 0}


def test_served_log_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "SERVED_LOG_SIZE", 3)
    totals = app_module.Totals()
    generation = engine.plan_chat_completion({"model": "sim-reasoner", "messages": QUESTION})
    for _ in range(5):
        totals.add("/v1/chat/completions", generation, b"Bearer k")
    snapshot = totals.served_snapshot()
    assert len(snapshot["served"]) == 3
    assert snapshot["total"] == 5 and snapshot["dropped"] == 2
    assert totals.snapshot()["requests"] == 5


# ---- OpenAI-compatible quirk servers ------------------------------------------------------


def chunks_of(server: Server, quirk: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, _, raw = server.request("POST", f"/quirks/{quirk}/v1/chat/completions", body, AUTH)
    assert status == 200
    events = sse(raw)
    assert events[-1] == (None, "[DONE]")
    return [json.loads(data) for _, data in events[:-1]]


STREAM_BODY = {
    "model": "sim-reasoner",
    "messages": QUESTION,
    "reasoning_effort": "low",
    "stream": True,
    "stream_options": {"include_usage": True},
}


def test_vllm_quirks(server: Server) -> None:
    expected = engine.plan_chat_completion(STREAM_BODY, prompt_cache=False)
    chunks = chunks_of(server, "vllm", STREAM_BODY)
    completions = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert completions == sorted(completions)
    assert completions[-1] == expected.output_tokens
    assert chunks[-1]["choices"] is None
    assert "completion_tokens_details" not in chunks[-1]["usage"]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning", "") for c in chunks[:-1])
    assert reasoning == expected.reasoning_text

    sdk_chunks = list(quirk_client(server, "vllm").chat.completions.create(**STREAM_BODY))
    assert sdk_chunks[-1].usage.completion_tokens == expected.output_tokens

    plain = quirk_client(server, "vllm").chat.completions.create(
        model="sim-reasoner", messages=QUESTION
    )
    assert plain.choices[0].message.model_extra["reasoning"]
    assert plain.usage.completion_tokens_details is None


def test_deepseek_quirks(server: Server) -> None:
    messages = [{"role": "system", "content": LONG_TEXT}, *QUESTION]
    client = quirk_client(server, "deepseek")
    completion = client.chat.completions.create(model="sim-reasoner", messages=messages)
    usage = completion.usage.model_dump()
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == usage["prompt_tokens"]
    )
    assert usage["prompt_cache_hit_tokens"] == usage["prompt_tokens_details"]["cached_tokens"] > 0
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert (
        len(completion.choices[0].message.model_extra["reasoning_content"].split(" ")) == reasoning
    )

    chunks = chunks_of(server, "deepseek", {**STREAM_BODY, "messages": messages})
    pieces = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c["choices"]]
    assert (
        len([piece for piece in pieces if piece])
        == chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"]
    )
    assert chunks[-1]["choices"] == []


def test_nonempty_choices_quirk(server: Server) -> None:
    chunks = chunks_of(server, "nonempty-choices", STREAM_BODY)
    with_usage = [chunk for chunk in chunks if chunk["usage"] is not None]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    expected = engine.plan_chat_completion(STREAM_BODY)
    assert (
        chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"]
        == expected.reasoning_tokens
    )


def test_llamacpp_quirk(server: Server) -> None:
    chunks = chunks_of(server, "llamacpp", STREAM_BODY)
    expected = engine.plan_chat_completion(STREAM_BODY, prompt_cache=False)
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]
    )
    assert reasoning == expected.reasoning_text
    assert chunks[-1]["usage"] == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.output_tokens,
        "total_tokens": expected.total_tokens,
    }
    totals = server.totals()["by_endpoint"]["/quirks/llamacpp/v1/chat/completions"]
    assert totals["reasoning_tokens"] == expected.reasoning_tokens


# ---- pacing and configuration ------------------------------------------------------------


def test_token_delay_header_paces_generation(server: Server, oai: openai.OpenAI) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION, "reasoning_effort": "minimal"}
    expected = engine.plan_chat_completion(body)
    started = time.monotonic()
    oai.chat.completions.create(**body, extra_headers={"x-sim-token-delay-ms": "4"})
    assert time.monotonic() - started >= 0.9 * 0.004 * expected.output_tokens

    started = time.monotonic()
    stream = oai.chat.completions.create(
        **body, stream=True, extra_headers={"x-sim-token-delay-ms": "2.5"}
    )
    arrivals = [
        time.monotonic() - started
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    # The simulator paces against a schedule from the request's start (a stall is caught
    # up, so gaps between arrivals may shrink): the last token cannot arrive before its
    # slot, and the visible text cannot all arrive at once.
    assert arrivals[-1] >= 0.9 * 0.0025 * (expected.output_tokens - 1)
    assert arrivals[0] < arrivals[-1]


def test_configuration() -> None:
    assert create_app(token_delay_s=Decimal("0.002")).token_delay_s == 0.002
    assert create_app(token_delay_s="0.5", tokens_per_second=200).token_delay_s == 0.005
    with pytest.raises(ValueError):
        create_app(token_delay_s=-1)


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECKON_SIM_TOKEN_DELAY_MS", "1.5")
    monkeypatch.delenv("RECKON_SIM_TOKENS_PER_SECOND", raising=False)
    assert create_app_from_env().token_delay_s == 0.0015
    monkeypatch.setenv("RECKON_SIM_TOKENS_PER_SECOND", "1000")
    assert create_app_from_env().token_delay_s == 0.001


def test_runs_as_a_plain_uvicorn_app() -> None:
    port = free_port()
    env = {**os.environ, "RECKON_SIM_TOKENS_PER_SECOND": "5000", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "uvicorn",
            "metering.simulator.app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/_sim/health")
                assert connection.getresponse().status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, (
                    "uvicorn metering.simulator.app:app did not start"
                )
                time.sleep(0.1)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=20
        )
        completion = client.chat.completions.create(model="sim-reasoner", messages=QUESTION)
        expected = engine.plan_chat_completion({"model": "sim-reasoner", "messages": QUESTION})
        assert completion.usage.completion_tokens == expected.output_tokens
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_upstream_fault_endpoints_reset_and_answer_garbage_and_count_nothing(
    server: Server,
) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION}
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    status, hdrs, raw = server.request("POST", "/faults/garbage/v1/chat/completions", body, headers)
    assert status == 200 and hdrs["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(http.client.IncompleteRead):  # 4096 bytes announced, a few sent
        server.request("POST", "/faults/reset-mid-stream/v1/chat/completions", body, headers)
    with pytest.raises(http.client.IncompleteRead):
        server.request(
            "POST", "/faults/reset-mid-stream/v1/messages", {**body, "stream": True}, headers
        )
    assert server.totals()["requests"] == 0


def test_hang_and_stall_before_first_event_send_nothing_until_the_client_leaves(
    server: Server,
) -> None:
    body = json.dumps({"model": "sim-reasoner", "messages": QUESTION, "stream": True}).encode()
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    for path in ("/faults/hang/v1/chat/completions", "/faults/hang/v1/messages"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
        try:
            connection.request("POST", path, body=body, headers=headers)
            with pytest.raises(TimeoutError):  # no status line, no headers
                connection.getresponse()
        finally:
            connection.close()
    for path in (
        "/faults/stall-before-first-event/v1/chat/completions",
        "/faults/stall-before-first-event/v1/messages",
    ):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("content-type") == "text/event-stream"
            with pytest.raises(TimeoutError):  # headers, then not a single event
                response.read1(1)
        finally:
            connection.close()
    assert server.totals()["requests"] == 0


def test_error_first_event_answers_200_then_an_error_event_in_each_wire(server: Server) -> None:
    body = {"model": "sim-reasoner", "messages": QUESTION, "stream": True}
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    status, hdrs, raw = server.request(
        "POST", "/faults/error-first-event/v1/chat/completions", body, headers
    )
    assert status == 200 and hdrs["content-type"] == "text/event-stream"
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    assert json.loads(raw[6:])["error"]["type"] == "server_error"
    status, hdrs, raw = server.request(
        "POST", "/faults/error-first-event/v1/messages", body, headers
    )
    assert status == 200 and raw.startswith(b"event: error\ndata: ")
    assert json.loads(raw.split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"
    assert server.totals()["requests"] == 0
