"""Stream trackers and request preparation, on real-shaped provider streams."""

import tracemalloc

import orjson
import pytest

from metering.proxy.adapters import (
    CHAT,
    MESSAGES,
    RESPONSES,
    ChatStreamTracker,
    InvalidRequest,
    prepare_call,
    stream_tracker_for,
)
from metering.proxy.sse import SseEvent, SseSplitter


def sse(*objects: object, event_names: list[str] | None = None) -> bytes:
    out = b""
    for i, obj in enumerate(objects):
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        name = event_names[i] if event_names else None
        out += (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + data + b"\n\n"
    return out


def run(tracker, stream: bytes) -> tuple[bytes, list[int]]:  # type: ignore[no-untyped-def]
    """Feed a stream; return what would reach the client and where terminal events were."""
    forwarded = b""
    terminal_at = []
    for i, event in enumerate(SseSplitter().feed(stream)):
        out = tracker.feed(event)
        if tracker.terminal:
            terminal_at.append(i)
        if out is not None:
            forwarded += out
    return forwarded, terminal_at


def chat_chunk(content: str | None = None, finish: str | None = None, usage=None, choices=True):  # type: ignore[no-untyped-def]
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "usage": usage}
    if choices:
        chunk["choices"] = [
            {
                "index": 0,
                "delta": {} if content is None else {"content": content},
                "finish_reason": finish,
            }
        ]
    else:
        chunk["choices"] = []
    return chunk


USAGE = {
    "prompt_tokens": 50,
    "completion_tokens": 120,
    "total_tokens": 170,
    "prompt_tokens_details": {"cached_tokens": 10},
    "completion_tokens_details": {"reasoning_tokens": 100},
}


def test_chat_stream_hides_usage_chunk_the_client_did_not_ask_for() -> None:
    stream = sse(
        chat_chunk("Hel"),
        chat_chunk("lo", "stop"),
        chat_chunk(usage=USAGE, choices=False),
        b"[DONE]",
    )
    tracker = stream_tracker_for(CHAT, provider="openai", hide_usage=True)
    forwarded, terminal_at = run(tracker, stream)
    assert b"prompt_tokens" not in forwarded
    assert forwarded.endswith(b"data: [DONE]\n\n")
    assert terminal_at == [3]
    outcome = tracker.outcome(completed=True)
    u = outcome.usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens) == (
        40,
        10,
        20,
        100,
    )
    assert outcome.response_id == "chatcmpl-1"
    assert outcome.status == "completed"


def test_chat_stream_keeps_usage_chunk_when_client_asked() -> None:
    stream = sse(chat_chunk("Hi", "stop"), chat_chunk(usage=USAGE, choices=False), b"[DONE]")
    tracker = stream_tracker_for(CHAT, provider="openai", hide_usage=False)
    forwarded, _ = run(tracker, stream)
    assert forwarded == stream
    assert tracker.outcome(completed=True).usage.reasoning_tokens == 100


@pytest.mark.parametrize("choices_value", [None, "nonempty"])
def test_chat_usage_on_null_or_nonempty_choices(choices_value) -> None:  # type: ignore[no-untyped-def]
    last = chat_chunk("!", "stop", usage=USAGE)
    if choices_value is None:
        last["choices"] = None
    stream = sse(chat_chunk("Hi"), last, b"[DONE]")
    tracker = stream_tracker_for(CHAT, provider="openai-compatible", hide_usage=True)
    forwarded, _ = run(tracker, stream)
    assert tracker.outcome(completed=True).usage.reasoning_tokens == 100
    # the content on that chunk still reaches the client, without the usage we asked for
    assert b"prompt_tokens" not in forwarded
    if choices_value == "nonempty":
        assert b'"content":"!"' in forwarded


def test_chat_cumulative_usage_on_every_frame_takes_the_last() -> None:
    frames = [
        chat_chunk("a", usage={"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n})
        for n in (1, 2, 3)
    ]
    stream = sse(*frames, b"[DONE]")
    tracker = stream_tracker_for(CHAT, provider="openai-compatible", hide_usage=False)
    run(tracker, stream)
    u = tracker.outcome(completed=True).usage
    assert u.input_tokens == 5
    assert u.output_tokens + u.reasoning_tokens == 3


def test_chat_reasoning_estimated_from_text_when_not_reported() -> None:
    def delta(**d):  # type: ignore[no-untyped-def]
        return {"id": "x", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}

    stream = sse(
        delta(reasoning_content="a" * 300),
        delta(content="b" * 100),
        {
            "id": "x",
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50},
        },
        b"[DONE]",
    )
    tracker = stream_tracker_for(CHAT, provider="openai-compatible", hide_usage=True)
    run(tracker, stream)
    u = tracker.outcome(completed=True).usage
    assert (u.reasoning_tokens, u.output_tokens, u.reasoning_source) == (30, 10, "estimated")


def test_chat_stream_cut_before_usage_is_incomplete() -> None:
    tracker = stream_tracker_for(CHAT, provider="openai", hide_usage=True)
    forwarded, terminal_at = run(tracker, sse(chat_chunk("Hel")))
    assert terminal_at == []
    outcome = tracker.outcome(completed=False)
    assert outcome.status == "incomplete"
    assert "missing_usage" in outcome.usage.flags


def test_responses_stream_usage_from_completed_event() -> None:
    usage = {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 70,
        "output_tokens_details": {"reasoning_tokens": 50},
        "total_tokens": 100,
    }
    names = ["response.created", "response.output_text.delta", "response.completed"]
    stream = sse(
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hi"},
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": {"id": "resp_1", "usage": usage},
        },
        event_names=names,
    )
    tracker = stream_tracker_for(RESPONSES, provider="openai", hide_usage=False)
    forwarded, terminal_at = run(tracker, stream)
    assert forwarded == stream
    assert terminal_at == [2]
    outcome = tracker.outcome(completed=True)
    assert (outcome.usage.output_tokens, outcome.usage.reasoning_tokens) == (20, 50)
    assert outcome.response_id == "resp_1"


def test_anthropic_stream_takes_last_cumulative_delta_never_sums() -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 200,
                "output_tokens": 1,
            },
        },
    }
    names = [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "message_delta",
        "message_stop",
    ]
    stream = sse(
        start,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 40}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 90, "output_tokens_details": {"thinking_tokens": 60}},
        },
        {"type": "message_stop"},
        event_names=names,
    )
    tracker = stream_tracker_for(MESSAGES, provider="anthropic", hide_usage=False)
    _, terminal_at = run(tracker, stream)
    assert terminal_at == [5]
    u = tracker.outcome(completed=True).usage
    assert (u.input_tokens, u.cache_write_tokens, u.cached_input_tokens) == (12, 100, 200)
    assert (u.output_tokens, u.reasoning_tokens, u.reasoning_source) == (30, 60, "reported")


def test_prepare_chat_stream_asks_upstream_for_usage() -> None:
    call = prepare_call(CHAT, {"model": "alias", "stream": True, "messages": []}, "upstream-x")
    body = orjson.loads(call.body)
    assert body["model"] == "upstream-x"
    assert body["stream_options"] == {"include_usage": True}
    assert call.hide_usage and call.stream


def test_a_prepared_body_holds_only_its_own_bytes() -> None:
    # A stream's prepared body lives as long as the stream: orjson's write buffer (4 KiB
    # for a small request) times every open stream was the largest single holder of
    # memory per stream.
    request = {"model": "a", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        calls = [prepare_call(CHAT, dict(request), "u") for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(calls[0].body) < 200
    assert held / len(calls) < 1024


def test_prepare_chat_stream_respects_client_usage_request() -> None:
    request = {"model": "a", "stream": True, "stream_options": {"include_usage": True}}
    call = prepare_call(CHAT, request, "u")
    assert not call.hide_usage


@pytest.mark.parametrize(
    "request_body",
    [{"model": "a", "stream": "yes"}, {"model": "a", "stream": True, "stream_options": "x"}],
)
def test_prepare_rejects_malformed_stream_fields(request_body) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest):
        prepare_call(CHAT, request_body, "u")


def test_a_reasoning_delta_is_first_output_without_a_parse() -> None:
    """A reasoning model streams reasoning before any visible content: the byte scan sees
    it as the first output (as the parse does), so TTFT is its time and the relay's fast
    path takes the frames after it."""
    tracker = ChatStreamTracker(count_text=False, hide_usage=False)
    head = b'{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
    tracker.feed(SseEvent(raw=b"data: " + head + b"\n\n", event=b"", data=head))
    assert tracker.response_id == "c1" and not tracker.first_output_seen
    empty = b'{"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":""}}]}'
    tracker.feed(SseEvent(raw=b"data: " + empty + b"\n\n", event=b"", data=empty))
    assert not tracker.first_output_seen
    thinking = b'{"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}'
    tracker.feed(SseEvent(raw=b"data: " + thinking + b"\n\n", event=b"", data=thinking))
    assert tracker.first_output_seen
    assert tracker.passes(b"data: " + thinking + b"\n\n")
