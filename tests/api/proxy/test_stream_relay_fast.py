"""The relay's fast path (plain events written from the upstream's read callback through
the server's "reckon.relay" extension) gives the client exactly the bytes, and the ledger
exactly the record, of the task path, however the upstream's bytes are cut into reads and
however the reads interleave with the relay task's steps."""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.proxy.call import Call
from metering.models import UsageRecord
from metering.proxy.adapters import CHAT, MESSAGES, RESPONSES, Endpoint, PreparedCall
from metering.proxy.callers import CallerContext, RouteInfo
from metering.proxy.upstream import UpstreamResponse
from tests.api.proxy.test_relay_records import FakeApp, FakeHold, never_disconnects

Status = UsageRecord.Status
TENANT = uuid.uuid4()


def _chat(content: str, usage: bytes = b"null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"' + content.encode() + b'"},'
        b'"finish_reason":null}],"usage":' + usage + b"}\n\n"
    )


CHAT_STREAM = (
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],'
    b'"usage":null}\n\n'
    + b"".join(_chat(f"tok{i} ") for i in range(12))
    + b": a comment line\n\n"
    + _chat("more")
    + b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":14,"total_tokens":23,'
    b'"completion_tokens_details":{"reasoning_tokens":4}}}\n\n'
    b"data: [DONE]\n\n"
)
# a reasoning model: reasoning deltas first (the first output), then the answer
REASONING_STREAM = CHAT_STREAM.replace(b'"content":"tok', b'"reasoning_content":"tok', 8)
# an upstream error mid-stream: hidden (generic message), the record flags it
CHAT_ERROR_STREAM = (
    CHAT_STREAM.split(
        b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk",'
        b'"created":1,"model":"m","choices":[],'
    )[0]
    + b'data: {"error":{"message":"internal at 10.0.0.7","type":"server_error"}}\n\n'
)
RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}\n\n'
    + b"".join(
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"w%d "}\n\n' % i
        for i in range(10)
    )
    + b"event: response.completed\n"
    b'data: {"type":"response.completed","response":{"id":"resp_1","usage":'
    b'{"input_tokens":5,"output_tokens":10,"total_tokens":15,'
    b'"output_tokens_details":{"reasoning_tokens":2}}}}\n\n'
)
MESSAGES_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","usage":'
    b'{"input_tokens":7,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text"}}\n\n'
    + b"".join(
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"t%d "}}\n\n' % i
        for i in range(10)
    )
    + b'event: ping\ndata: {"type":"ping"}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":11}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

# a counted reasoning stream (no reasoning count in its usage: it is estimated from the
# characters): unicode, escapes, empty deltas and other layouts
COUNTED_STREAM = (
    CHAT_STREAM.replace(b'"content":"tok1 ', b'"reasoning_content":"\xc3\xa9\xe2\x82\xac ')
    .replace(b'"content":"tok2 ', b'"reasoning_content":"a\\n\\"b\\u00e9')
    .replace(b'"content":"tok3 ', b'"reasoning_content":"')
    .replace(b'"content":"tok4 ', b'"content":null,"reasoning_content":"\xf0\x9f\x98\x80')
    .replace(b'"content":"tok5 ', b'"reasoning":"r')
).replace(b',"completion_tokens_details":{"reasoning_tokens":4}', b"")

# Anthropic with a thinking block: its deltas and the text's are counted
THINKING_STREAM = MESSAGES_STREAM.replace(
    b'"content_block":{"type":"text"}}\n\n',
    b'"content_block":{"type":"thinking","thinking":""}}\n\n'
    + b"".join(
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"%s"}}\n\n' % text
        for text in (b"hm ", b"\xc3\xbc\xc3\xb1 ", b"", b"line\none", b"x" * 40)
    )
    + b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA=="}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text"}}\n\n',
)

# name: (endpoint, provider, hide_usage, upstream bytes)
STREAMS: dict[str, tuple[Endpoint, str, bool, bytes]] = {
    "chat": (CHAT, "openai", False, CHAT_STREAM),
    "chat-usage-hidden": (CHAT, "openai", True, CHAT_STREAM),
    "chat-crlf": (CHAT, "openai", True, CHAT_STREAM.replace(b"\n", b"\r\n")),
    "chat-text-counted": (CHAT, "openai-compatible", True, CHAT_STREAM),
    "chat-reasoning-counted": (CHAT, "openai-compatible", True, COUNTED_STREAM),
    "chat-error": (CHAT, "openai", False, CHAT_ERROR_STREAM),
    "chat-reasoning": (CHAT, "openai", True, REASONING_STREAM),
    "responses": (RESPONSES, "openai", False, RESPONSES_STREAM),
    "messages": (MESSAGES, "anthropic", False, MESSAGES_STREAM),
    "messages-thinking": (MESSAGES, "anthropic", False, THINKING_STREAM),
}
# what differs between two runs of one call: its id, and the clock
VARYING = {"request_id", "latency_us", "ttft_us", "started_at", "finished_at"}


class Conn:
    """The upstream connection under an UpstreamResponse (no socket)."""

    def __init__(self) -> None:
        self.transport = self
        self.closed = False
        self.keep_alive = False
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        self.closed = True

    def time_reads(self, response: object) -> None:
        """The real connection's read timer (metering.proxy.upstream): none here."""


class Client:
    """The server's relay extension: what it writes goes where the ASGI body goes."""

    def __init__(self, out: list[bytes]) -> None:
        self.out = out
        self.writes = 0

    def start_relay(self, on_disconnect: Any) -> None:
        self.on_disconnect = on_disconnect

    def ready(self) -> bool:
        return True

    def write_chunk(self, body: bytes) -> None:
        self.out.append(body)
        self.writes += 1


def make_call(app: FakeApp, endpoint: Endpoint, provider: str, hide_usage: bool) -> Call:
    route = RouteInfo(
        alias="thinker",
        provider=provider,
        upstream_model="m",
        accelerator="",
        base_url="http://127.0.0.1:9",
        credential="",
        credential_missing=False,
        route_id=1,
        target="a",
        first_byte_timeout_s=5.0,
    )
    return Call(
        app,  # type: ignore[arg-type]
        CallerContext(TENANT, 1, None, {"thinker": route}),
        route,
        endpoint,
        PreparedCall(b"{}", True, hide_usage),
        datetime.now(UTC),
        0,
        FakeHold(),  # type: ignore[arg-type]
    )


async def _relay(
    name: str, reads: list[bytes], steps: list[int], fast: bool
) -> tuple[bytes, dict[str, Any], int]:
    """Relay `reads` (fed as the connection's read callback feeds them, with `steps`
    loop steps after each); the client's bytes, the record, the fast path's writes (those
    of the read callback; the relay's task may write through the extension too)."""
    endpoint, provider, hide_usage, _ = STREAMS[name]
    app = FakeApp()
    call = make_call(app, endpoint, provider, hide_usage)
    out: list[bytes] = []
    client = Client(out)
    call.client = client if fast else None

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            out.append(message["body"])

    loop = asyncio.get_running_loop()
    response = UpstreamResponse(Conn(), loop, 60.0, None)  # type: ignore[arg-type]
    response.status = 200
    response.headers = {"content-type": "text/event-stream"}
    task = asyncio.ensure_future(call.relay_stream(response, never_disconnects, send))  # type: ignore[arg-type]
    fast_writes = 0  # the client's writes made in the read callback itself
    for data, step in zip(reads, steps, strict=True):
        before = client.writes
        response._feed(data)
        fast_writes += client.writes - before
        for _ in range(step):
            await asyncio.sleep(0)
    response._complete()
    await task
    assert len(app.rows) == 1 and len(app.released) == 1  # one record, one settled hold
    row = {k: v for k, v in app.rows[0].items() if k not in VARYING}
    assert app.rows[0]["ttft_us"] is not None
    body = b"".join(out).replace(str(call.request_id).encode(), b"<request id>")
    return body, row, fast_writes


def relay(name: str, reads: list[bytes], steps: list[int], fast: bool) -> tuple[Any, ...]:
    return asyncio.run(_relay(name, reads, steps, fast))


def reference(name: str) -> tuple[bytes, dict[str, Any]]:
    """The task path (no extension), the whole stream in one read."""
    stream = STREAMS[name][3]
    body, row, _ = relay(name, [stream], [0], fast=False)
    return body, row


@st.composite
def rechunked(draw: Any, stream: bytes) -> tuple[list[bytes], list[int]]:
    cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=40)))
    bounds = [0, *cuts, len(stream)]
    reads = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    steps = draw(st.lists(st.integers(0, 3), min_size=len(reads), max_size=len(reads)))
    return reads, steps


def _property(name: str) -> None:
    expected = reference(name)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(chunking=rechunked(STREAMS[name][3]))
    def check(chunking: tuple[list[bytes], list[int]]) -> None:
        reads, steps = chunking
        body, row, _ = relay(name, reads, steps, fast=True)
        assert (body, row) == expected

    check()


def test_any_chunking_of_a_chat_stream_gives_the_same_bytes_and_record() -> None:
    _property("chat")


def test_any_chunking_with_hidden_usage_gives_the_same_bytes_and_record() -> None:
    _property("chat-usage-hidden")


def test_any_chunking_of_a_crlf_stream_gives_the_same_bytes_and_record() -> None:
    _property("chat-crlf")


def test_any_chunking_of_a_text_counted_stream_gives_the_same_bytes_and_record() -> None:
    _property("chat-text-counted")


def test_any_chunking_of_a_counted_reasoning_stream_gives_the_same_bytes_and_record() -> None:
    _property("chat-reasoning-counted")


def test_any_chunking_of_a_thinking_stream_gives_the_same_bytes_and_record() -> None:
    _property("messages-thinking")


def test_any_chunking_of_a_stream_with_an_error_gives_the_same_bytes_and_record() -> None:
    _property("chat-error")


def test_any_chunking_of_a_reasoning_stream_gives_the_same_bytes_and_record() -> None:
    _property("chat-reasoning")


def test_any_chunking_of_a_responses_stream_gives_the_same_bytes_and_record() -> None:
    _property("responses")


def test_any_chunking_of_a_messages_stream_gives_the_same_bytes_and_record() -> None:
    _property("messages")


def _events(stream: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]


def test_plain_events_read_one_at_a_time_take_the_fast_path() -> None:
    for name in (
        "chat",
        "chat-usage-hidden",
        "chat-reasoning",
        "chat-text-counted",
        "chat-reasoning-counted",
        "responses",
        "messages",
        "messages-thinking",
    ):
        reads = _events(STREAMS[name][3])
        body, row, writes = relay(name, reads, [2] * len(reads), fast=True)
        assert (body, row) == reference(name), name
        # all but the events that matter (the first ones, usage, terminal) are written
        # by the read callback
        assert writes >= len(reads) - 6, (name, writes, len(reads))


def test_counted_streams_count_what_the_task_path_counts() -> None:
    """Their records estimate reasoning from the counted characters: the fast path's
    counts (compared whole above) are the right ones."""
    _, row = reference("chat-reasoning-counted")
    # 10 reasoning characters ("é€ ", 'a\n"bé', "", "😀", "r") of 51: 14 * 10 / 51 -> 3
    assert (row["output_tokens"], row["reasoning_tokens"]) == (11, 3)
    _, row = reference("messages-thinking")
    # 54 thinking characters ("hm ", "üñ ", "", "line\none", 40 "x") of 84: 11 * 54 / 84 -> 7
    assert (row["output_tokens"], row["reasoning_tokens"]) == (4, 7)


def test_events_that_matter_never_take_the_fast_path() -> None:
    """An error event is hidden."""
    body, row, _ = relay("chat-error", _events(CHAT_ERROR_STREAM), [2] * 16, fast=True)
    assert b"10.0.0.7" not in body and b"upstream_error" in body
    assert row["status"] == Status.UPSTREAM_ERROR


def test_hidden_usage_is_stripped_and_recorded() -> None:
    body, row = reference("chat-usage-hidden")
    assert b'"usage":{' not in body and body.endswith(b"data: [DONE]\n\n")
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (9, 10, 4)


def test_the_terminal_event_leaves_with_the_end_of_the_body() -> None:
    """One ASGI message (so one write) carries the last event and ends the body."""

    async def scenario() -> list[dict[str, Any]]:
        app = FakeApp()
        call = make_call(app, CHAT, "openai", False)
        messages: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        loop = asyncio.get_running_loop()
        response = UpstreamResponse(Conn(), loop, 60.0, None)  # type: ignore[arg-type]
        response.status = 200
        response.headers = {"content-type": "text/event-stream"}
        response._feed(CHAT_STREAM)
        response._complete()
        await call.relay_stream(response, never_disconnects, send)  # type: ignore[arg-type]
        assert len(app.rows) == 1
        return messages

    messages = asyncio.run(scenario())
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert bodies[-1] == {
        "type": "http.response.body",
        "body": b"data: [DONE]\n\n",
        "more_body": False,
    }
    assert all(b"[DONE]" not in m["body"] for m in bodies[:-1])


def test_the_relay_task_writes_through_the_extension_too() -> None:
    """With the extension, the events the task forwards (a text-counted stream parses
    every one) leave through `write_chunk`; only the response start and the end of the
    body (with the terminal event) are ASGI messages."""

    async def scenario() -> tuple[list[str], int]:
        endpoint, provider, hide_usage, stream = STREAMS["chat-text-counted"]
        call = make_call(FakeApp(), endpoint, provider, hide_usage)
        client = Client([])
        call.client = client
        messages: list[str] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message["type"])

        response = UpstreamResponse(Conn(), asyncio.get_running_loop(), 60.0, None)  # type: ignore[arg-type]
        response.status = 200
        response.headers = {"content-type": "text/event-stream"}
        task = asyncio.ensure_future(call.relay_stream(response, never_disconnects, send))  # type: ignore[arg-type]
        for event in _events(stream):
            response._feed(event)
            await asyncio.sleep(0)
        response._complete()
        await task
        return messages, client.writes

    messages, writes = asyncio.run(scenario())
    assert messages == ["http.response.start", "http.response.body"]
    assert writes > 0
