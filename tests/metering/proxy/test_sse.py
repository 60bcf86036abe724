import pytest

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
