"""Incremental server-sent-events framing over raw bytes.

Events are forwarded byte-for-byte unless a tracker rewrites them, so the splitter keeps
each event's raw block. CRLF framing is normalised to LF (equivalent under the SSE spec).

`take_plain` is the relay's fast path: the complete events of a read, as one run of bytes,
when a byte scan (`passes`) shows that none of them matters to anyone but the client (but
for text counts, which `passes` takes from the bytes). It
gives exactly the bytes `feed` would have forwarded for them (it declines CR framing and
empty blocks, which `feed` rewrites or drops), and it scans an event only once it is
complete, so a marker split across reads is still seen.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class SseEvent:
    raw: bytes  # the whole event block, terminated by a blank line, ready to forward
    event: bytes  # the `event:` field, or b"" when absent
    data: bytes  # the `data:` lines joined by "\n"


class SseSplitter:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if 13 in buffer:  # b"\r"
            buffer = buffer.replace(b"\r\n", b"\n")
            if buffer.endswith(b"\r"):
                self._buffer = buffer
                return []
        events: list[SseEvent] = []
        start = 0
        find = buffer.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            block = buffer[start:end]
            start = end + 2
            if block:
                events.append(parse_block(block))
        self._buffer = buffer[start:]
        return events

    def take_plain(self, chunk: bytes, passes: Callable[[bytes], bool]) -> bytes | None:
        """The complete events of the pending bytes and `chunk`, consumed, if `passes`
        accepts them (b"": none complete yet, `chunk` is kept pending); None: nothing was
        consumed and `feed(chunk)` must take it."""
        # (an int `in` and `find`: `bytes in bytes` raises and clears a TypeError first,
        # metering.proxy.adapters)
        buffer = self._buffer + chunk if self._buffer else chunk
        if 13 in buffer:  # b"\r"
            return None
        end = buffer.rfind(b"\n\n") + 2
        if end < 2:
            self._buffer = buffer
            return b""
        plain = buffer[:end] if end < len(buffer) else buffer
        if (
            plain[0] == 10  # b"\n": a leading empty line
            # an empty block; none when the first newline ends the run (one one-line event)
            or (plain.find(10) != end - 2 and plain.find(b"\n\n\n") >= 0)
            or not passes(plain)
        ):
            return None
        self._buffer = buffer[end:]
        return plain

    @property
    def pending(self) -> bytes:
        """Bytes of an unterminated event (a stream cut mid-event leaves them)."""
        return self._buffer


def parse_block(block: bytes) -> SseEvent:
    event = b""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
    data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
    return SseEvent(raw=block + b"\n\n", event=event, data=data)


def block_fields(block: bytes) -> tuple[bytes, bytes]:
    """An event block's (event, data), as `parse_block` reads them; the common one-line
    `data:` and two-line `event:` + `data:` blocks without its split."""
    if 10 not in block:  # b"\n"
        if block.startswith(b"data: "):
            return b"", block[6:]
    elif block.startswith(b"event:") and block.count(10) == 1:
        line, _, rest = block.partition(b"\n")
        if rest.startswith(b"data: "):
            return line[6:].strip(), rest[6:]
    parsed = parse_block(block)
    return parsed.event, parsed.data


def format_event(data: bytes, event: bytes = b"") -> bytes:
    prefix = b"event: " + event + b"\n" if event else b""
    return prefix + b"data: " + data + b"\n\n"
