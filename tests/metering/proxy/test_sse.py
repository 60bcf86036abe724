import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.proxy.sse import SseSplitter, format_event

STREAM = (
    b'event: message_start\ndata: {"a":1}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"b":2}\n\n'
    b"data: line1\ndata: line2\n\n"
    b"data: [DONE]\n\n"
)


def events_of(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    splitter = SseSplitter()
    out = []
    for chunk in chunks:
        out.extend((e.event, e.data) for e in splitter.feed(chunk))
    assert splitter.pending == b""
    return out


EXPECTED = [
    (b"message_start", b'{"a":1}'),
    (b"", b""),
    (b"", b'{"b":2}'),
    (b"", b"line1\nline2"),
    (b"", b"[DONE]"),
]


def test_whole_stream_in_one_chunk() -> None:
    assert events_of([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert events_of(chunks) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 5])
def test_crlf_framing_split_anywhere(size: int) -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    chunks = [crlf[i : i + size] for i in range(0, len(crlf), size)]
    assert events_of(chunks) == EXPECTED


def test_raw_block_round_trips_for_forwarding() -> None:
    splitter = SseSplitter()
    raw = b"".join(e.raw for e in splitter.feed(STREAM))
    assert raw == STREAM


def test_unterminated_event_stays_pending() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"x"') == []
    assert splitter.pending == b'data: {"x"'


def test_format_event() -> None:
    assert format_event(b"{}", b"ping") == b"event: ping\ndata: {}\n\n"
    assert format_event(b"{}") == b"data: {}\n\n"


PIECES = [b"data: x", b"data: {}", b"event: e", b": c", b"\n", b"\n", b"\r\n", b"\r"]


@given(
    st.lists(st.sampled_from(PIECES), max_size=12),
    st.lists(st.sampled_from(PIECES), max_size=12),
)
def test_take_plain_gives_what_feed_would_forward_or_declines(
    pending: list[bytes], read: list[bytes]
) -> None:
    """Whatever is pending and read, take_plain either declines (consuming nothing) or
    takes exactly the raw bytes `feed` forwards for the same input, leaving the same tail."""
    before, chunk = b"".join(pending), b"".join(read)
    fast, slow = SseSplitter(), SseSplitter()
    fast.feed(before)
    slow.feed(before)
    kept = fast.pending
    taken = fast.take_plain(chunk, lambda events: True)
    forwarded = b"".join(event.raw for event in slow.feed(chunk))
    if taken is None:
        assert fast.pending == kept
        assert b"".join(event.raw for event in fast.feed(chunk)) == forwarded
    else:
        assert taken == forwarded
    assert fast.pending == slow.pending


def test_take_plain_declines_an_empty_block_after_a_one_line_event() -> None:
    splitter = SseSplitter()
    assert splitter.take_plain(b"data: x\n\n\n", lambda events: True) is None
    assert splitter.take_plain(b"data: x\n\n\ndata: y\n\n", lambda events: True) is None
    assert splitter.take_plain(b"\n\n", lambda events: True) is None
    assert splitter.take_plain(b"data: x\n\n", lambda events: True) == b"data: x\n\n"
    assert splitter.take_plain(b"data: x\n\n", lambda events: False) is None
    assert splitter.pending == b""
