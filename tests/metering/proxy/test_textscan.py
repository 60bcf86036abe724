"""The fast path's text counts (a byte scan of runs of events, `passes`) are exactly what
`feed` counts event by event, whatever the deltas hold: unicode, escapes, empty strings,
bytes that are not JSON or not UTF-8, reasoning and visible keys, error chunks, Anthropic
thinking, text and signature deltas, and however the events fall into runs."""

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.proxy.adapters import ChatStreamTracker, MessagesStreamTracker, StreamTracker
from metering.proxy.sse import SseSplitter
from metering.proxy.textscan import TextScan

# a delta's string value, as JSON (escapes where needed) or as raw bytes between quotes
# (which may be no JSON at all: a quote, a control character, bytes that are not UTF-8)
_TEXT = st.text(st.characters(codec="utf-8", categories=None) | st.sampled_from('"\\\n\t/é€😀\x7f'))
_VALUE = st.one_of(
    _TEXT.map(orjson.dumps),
    _TEXT.map(lambda text: b'"' + text.encode("utf-8", "surrogatepass") + b'"'),
    st.binary(max_size=12).map(lambda raw: b'"' + raw + b'"'),
    st.sampled_from([b'""', b"null", b"7", b'"tok tok "', b'"\\u00e9\\n"', b'"\\ud83d\\ude00"']),
)

CHAT_HEAD = b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
CHAT_LAYOUTS = [
    b'[{"index":0,"delta":{"reasoning_content":%s},"logprobs":null,"finish_reason":null}]',
    b'[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]',
    b'[{"index":0,"delta":{"reasoning":%s},"finish_reason":null}]',
    b'[{"index":0,"delta":{"content":null,"reasoning_content":%s}}]',
    b'[{"index":0,"delta":{"reasoning_content":"","reasoning":%s}}]',
    b'[{"index":0,"delta":{"reasoning_content":%s,"reasoning":"xy"}}]',
    b'[{"index":0,"delta":{"content":%s,"reasoning_content":"x"}}]',
    b'[{"index":0,"delta":{"content":%s}},{"index":1,"delta":{"content":"ab"}}]',
    b'[{"index":0,"delta":{"content":%s,"content":"zz"}}]',
    b'[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":%s}}]}}]',
    b'[{"index":0,"delta":{},"logprobs":{"content":[{"token":%s}]}}]',
]
MESSAGES_LAYOUTS = [
    b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":%s}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":%s}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":%s}}',
    b'{"type":"content_block_delta","index":0,"delta":{"thinking":%s,"text":"ab"}}',
]


def _no_framing(value: bytes) -> bool:
    return b"\r" not in value and b"\n\n" not in value and not value.endswith(b"\n")


@st.composite
def chat_events(draw: Any) -> list[bytes]:
    events = []
    for _ in range(draw(st.integers(1, 14))):
        value = draw(_VALUE.filter(_no_framing))
        if draw(st.integers(0, 9)) == 0:  # an error chunk: feed learns more than text
            events.append(b'data: {"error":{"message":' + value + b"}}\n\n")
            continue
        layout = draw(st.sampled_from(CHAT_LAYOUTS))
        data = CHAT_HEAD + layout % value + draw(st.sampled_from([b',"usage":null}', b"}"]))
        events.append(b"data: " + data + b"\n\n")
    return events


@st.composite
def messages_events(draw: Any) -> list[bytes]:
    events = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["delta", "delta", "delta", "ping", "stop"]))
        if kind == "ping":
            events.append(b'event: ping\ndata: {"type":"ping"}\n\n')
        elif kind == "stop":
            events.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
            )
        else:
            layout = draw(st.sampled_from(MESSAGES_LAYOUTS))
            value = draw(_VALUE.filter(_no_framing))
            events.append(b"event: content_block_delta\ndata: " + layout % value + b"\n\n")
    return events


def _feed(tracker: StreamTracker, splitter: SseSplitter, data: bytes) -> None:
    for event in splitter.feed(data):
        tracker.feed(event)


def _state(tracker: StreamTracker) -> tuple[Any, ...]:
    return (
        tracker.text.visible_chars,
        tracker.text.reasoning_chars,
        tracker.response_id,
        tracker.first_output_seen,
        tracker.errored,
        tracker.terminal,
    )


def _compare(make: Any, head: bytes, events: list[bytes], cuts: list[int]) -> int:
    """Feed `events` to one tracker event by event, and to another as runs (cut before
    each event index in `cuts`) offered to `passes` first; their states must be equal.
    Gives how many runs `passes` took."""
    slow, fast = make(), make()
    slow_split, fast_split = SseSplitter(), SseSplitter()
    _feed(slow, slow_split, head)
    _feed(fast, fast_split, head)
    assert fast.first_output_seen
    for event in events:
        _feed(slow, slow_split, event)
    taken = 0
    bounds = [0, *sorted(set(cuts)), len(events)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        run = b"".join(events[a:b])
        if not run:
            continue
        if fast.passes(run):
            taken += 1
        else:
            _feed(fast, fast_split, run)
    assert _state(fast) == _state(slow)
    return taken


CHAT_FIRST = b"data: " + CHAT_HEAD + b'[{"index":0,"delta":{"content":"hi"}}]}\n\n'
MESSAGES_FIRST = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"thinking":"hm"}}\n\n'
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=chat_events(), cuts=st.lists(st.integers(0, 14), max_size=6))
def test_counted_chat_text_is_what_feed_counts(events: list[bytes], cuts: list[int]) -> None:
    _compare(lambda: ChatStreamTracker(count_text=True, hide_usage=True), CHAT_FIRST, events, cuts)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=messages_events(), cuts=st.lists(st.integers(0, 14), max_size=6))
def test_counted_thinking_stream_text_is_what_feed_counts(
    events: list[bytes], cuts: list[int]
) -> None:
    _compare(MessagesStreamTracker, MESSAGES_FIRST, events, cuts)


def test_plain_deltas_are_taken_and_counted_in_characters() -> None:
    """The common case takes the fast path: a run of plain deltas, unicode included."""
    events = [
        b"data: " + CHAT_HEAD + CHAT_LAYOUTS[0] % orjson.dumps(text) + b"}\n\n"
        for text in ("tok ", "é€😀", "", "tok tok ")
    ]
    chat = lambda: ChatStreamTracker(count_text=True, hide_usage=False)  # noqa: E731
    assert _compare(chat, CHAT_FIRST, events, [1, 2, 3]) == 4
    thinking = [
        b"event: content_block_delta\ndata: " + MESSAGES_LAYOUTS[0] % orjson.dumps(text) + b"\n\n"
        for text in ("let me see", "ünï", "")
    ]
    assert _compare(MessagesStreamTracker, MESSAGES_FIRST, thinking, [1]) == 2


def test_a_shape_is_learnt_only_when_parses_prove_it() -> None:
    """A value the count does not depend on (a duplicate key's first, a key of the same
    name outside a delta) or that has a fallback (`reasoning_content or reasoning`) is no
    shape: such deltas are parsed."""
    scan = TextScan(lambda data: (0, 0), (b'"content":"',))
    assert scan.count(CHAT_HEAD + CHAT_LAYOUTS[1] % b'"abc"' + b"}") == (0, 0)
    assert scan.shapes == []
    for layout, learnt in [
        (CHAT_LAYOUTS[0], True),
        (CHAT_LAYOUTS[4], True),  # the reasoning value, reasoning_content being ""
        (CHAT_LAYOUTS[5], False),  # reasoning_content, else "xy": not linear in the value
        (CHAT_LAYOUTS[8], False),  # the duplicate's last value wins
        (CHAT_LAYOUTS[10], False),  # not a delta's
    ]:
        tracker = ChatStreamTracker(count_text=True, hide_usage=False)
        for event in SseSplitter().feed(CHAT_FIRST):
            tracker.feed(event)
        assert tracker.passes(b"data: " + CHAT_HEAD + layout % b'"abc"' + b"}\n\n")
        assert tracker.scan is not None
        assert (len(tracker.scan.shapes) == 1) is learnt, layout
