"""A paced streaming upstream for bench/stream_bench.py: OpenAI chat completions, and
Anthropic messages with a thinking block.

Lean on purpose (asyncio + uvloop, a raw Protocol, no framework): at 10,000 open streams
the upstream must not be what the benchmark measures. One timer drives every stream: the
pacing interval is cut into slots of TICK seconds, each stream lives in the slot of the
moment it started, and each tick writes the next frame to every stream of its slot, so
each stream gets one frame per interval and the aggregate rate stays smooth.

    python bench/paced_upstream.py --port 8300    # on 127.0.0.1 to 127.0.0.4

A stream of `chunks` frames (each one write, one HTTP chunk):
- frame 0, sent with the response head: the role delta (`"content":""`);
- frames 1 .. chunks-2: one delta each, the first half `reasoning_content`, the rest
  `content`, each standing for a few tokens (1 to 4, varying by stream);
- the last frame: the finish_reason delta, the usage chunk when the request asked for
  it (`stream_options.include_usage`), and `data: [DONE]`, in one write.
The usage reports `completion_tokens` (reasoning + visible) with
`completion_tokens_details.reasoning_tokens`, as OpenAI does.

A messages stream (POST .../messages) has the same pacing and tokens in Anthropic's events:
frame 0 is message_start and a thinking block's start, the first half of the deltas are
thinking_delta (the first text delta's frame also carries the thinking block's
signature_delta and stop, and the text block's start), the last frame the text block's
stop, message_delta with the output tokens, and message_stop. Anthropic reports no
thinking count: a proxy estimates it from the characters, and every token is "tok ", so
the estimate is exact.

Control endpoints (HTTP, on the same port):
- POST /_paced/config {"chunks": 50, "interval": 0.2}: pacing of streams started after it;
- GET /_paced/totals: per upstream model, the streams started and completed (last frame
  written) and the tokens reported in completed streams' usage;
- POST /_paced/reset: zero the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import time

import uvloop

TICK = 0.005  # seconds per timer slot
PROMPT_TOKENS = 14
_counter = itertools.count(1)


class Totals:
    __slots__ = ("started", "completed", "prompt_tokens", "completion_tokens", "reasoning_tokens")

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Pacer:
    """The one timer loop: slots of streams, one frame per stream per interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.totals: dict[str, Totals] = {}
        self.slots: list[list[Stream]] = [[]]
        self.tick_index = 0
        self.start = loop.time()
        self.configure(chunks=50, interval=0.2)
        loop.call_soon(self._tick)

    def configure(self, *, chunks: int, interval: float) -> None:
        if chunks < 3 or interval <= 0:
            raise ValueError("chunks >= 3 and interval > 0")
        self.chunks = chunks
        count = max(1, round(interval / TICK))
        self.interval = count * TICK  # the pacing as the timer can keep it
        # streams still running when the interval changes are spread over the new slots
        if count != len(self.slots):
            old = [s for slot in self.slots for s in slot]
            self.slots = [[] for _ in range(count)]
            for number, stream in enumerate(old):
                self.slots[number % count].append(stream)

    def add(self, stream: Stream) -> None:
        # the slot that ran last: its next turn is one whole interval away
        self.slots[(self.tick_index - 1) % len(self.slots)].append(stream)

    def _tick(self) -> None:
        slot_number = self.tick_index % len(self.slots)
        streams = self.slots[slot_number]
        if streams:
            self.slots[slot_number] = [s for s in streams if s.advance()]
        self.tick_index += 1
        # scheduled from the start time, so a late tick does not shift the whole schedule
        self.loop.call_at(self.start + self.tick_index * TICK, self._tick)


def _anthropic_event(name: bytes, payload: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


class Stream:
    __slots__ = ("conn", "head", "tail", "number", "sent", "chunks", "per_chunk", "usage", "totals")

    def __init__(
        self, conn: Upstream, model: str, chunks: int, include_usage: bool, totals: Totals
    ) -> None:
        self.conn = conn
        self.number = next(_counter)
        self.chunks = chunks
        self.per_chunk = 1 + self.number % 4  # tokens a delta frame stands for
        self.totals = totals
        self.usage = include_usage
        created = int(time.time())
        self.head = (
            b'data: {"id":"chatcmpl-paced%d","object":"chat.completion.chunk","created":%d,'
            b'"model":%s,"system_fingerprint":null,"choices":'
            % (self.number, created, json.dumps(model).encode())
        )
        self.tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self.sent = 0

    def first_frame(self) -> bytes:
        self.sent = 1
        return (
            self.head + b'[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            b'"logprobs":null,"finish_reason":null}]' + self.tail
        )

    def reasoning_frames(self) -> int:
        return (self.chunks - 2) // 2

    def advance(self) -> bool:
        """Write the next frame; False once the stream is over (or its client left)."""
        conn = self.conn
        if conn.closed:
            return False
        number = self.sent
        self.sent += 1
        text = b'"' + b"tok " * self.per_chunk + b'"'
        if number < self.chunks - 1:
            key = b"reasoning_content" if number <= self.reasoning_frames() else b"content"
            frame = (
                self.head
                + b'[{"index":0,"delta":{"'
                + key
                + b'":'
                + text
                + b'},"logprobs":null,"finish_reason":null}]'
                + self.tail
            )
            conn.write_chunk(frame)
            return True
        deltas = self.chunks - 2
        reasoning = self.reasoning_frames() * self.per_chunk
        completion = deltas * self.per_chunk
        frame = (
            self.head
            + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]'
            + self.tail
        )
        if self.usage:
            usage = (
                b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
                b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
                b'"completion_tokens_details":{"reasoning_tokens":%d,"audio_tokens":0,'
                b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
                % (PROMPT_TOKENS, completion, PROMPT_TOKENS + completion, reasoning)
            )
            frame += self.head + b'[],"usage":' + usage + b"}\n\n"
        frame += b"data: [DONE]\n\n"
        conn.write_chunk(frame)
        conn.finish()
        totals = self.totals
        totals.completed += 1
        totals.prompt_tokens += PROMPT_TOKENS
        totals.completion_tokens += completion
        totals.reasoning_tokens += reasoning
        return False


class MessagesStream(Stream):
    """The same pacing and tokens as an Anthropic messages stream with thinking."""

    __slots__ = ()

    def first_frame(self) -> bytes:
        self.sent = 1
        return _anthropic_event(
            b"message_start",
            b'{"type":"message_start","message":{"id":"msg_paced%d","type":"message",'
            b'"role":"assistant","content":[],"model":"paced","stop_reason":null,'
            b'"usage":{"input_tokens":%d,"output_tokens":1}}}' % (self.number, PROMPT_TOKENS),
        ) + _anthropic_event(
            b"content_block_start",
            b'{"type":"content_block_start","index":0,'
            b'"content_block":{"type":"thinking","thinking":"","signature":""}}',
        )

    def advance(self) -> bool:
        conn = self.conn
        if conn.closed:
            return False
        number = self.sent
        self.sent += 1
        text = b'"' + b"tok " * self.per_chunk + b'"'
        thinking = self.reasoning_frames()
        if number <= thinking:
            conn.write_chunk(
                _anthropic_event(
                    b"content_block_delta",
                    b'{"type":"content_block_delta","index":0,'
                    b'"delta":{"type":"thinking_delta","thinking":' + text + b"}}",
                )
            )
            return True
        if number < self.chunks - 1:
            frame = b""
            if number == thinking + 1:
                frame = (
                    _anthropic_event(
                        b"content_block_delta",
                        b'{"type":"content_block_delta","index":0,"delta":'
                        b'{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA"}}',
                    )
                    + _anthropic_event(
                        b"content_block_stop", b'{"type":"content_block_stop","index":0}'
                    )
                    + _anthropic_event(
                        b"content_block_start",
                        b'{"type":"content_block_start","index":1,'
                        b'"content_block":{"type":"text","text":""}}',
                    )
                )
            frame += _anthropic_event(
                b"content_block_delta",
                b'{"type":"content_block_delta","index":1,'
                b'"delta":{"type":"text_delta","text":' + text + b"}}",
            )
            conn.write_chunk(frame)
            return True
        reasoning = thinking * self.per_chunk
        completion = (self.chunks - 2) * self.per_chunk
        conn.write_chunk(
            _anthropic_event(b"content_block_stop", b'{"type":"content_block_stop","index":1}')
            + _anthropic_event(
                b"message_delta",
                b'{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
                b'"usage":{"output_tokens":%d}}' % completion,
            )
            + _anthropic_event(b"message_stop", b'{"type":"message_stop"}')
        )
        conn.finish()
        totals = self.totals
        totals.completed += 1
        totals.prompt_tokens += PROMPT_TOKENS
        totals.completion_tokens += completion
        totals.reasoning_tokens += reasoning
        return False


class Upstream(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive, Content-Length request bodies."""

    __slots__ = ("pacer", "transport", "buffer", "closed", "busy")

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.closed = False
        self.busy = False  # a stream is being written on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = lines[0].split(" ", 2)
            self.handle(method, path, body)

    def respond(self, status: str, payload: object) -> None:
        body = json.dumps(payload).encode()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status.encode(), len(body), body)
        )

    def handle(self, method: str, path: str, body: bytes) -> None:
        pacer = self.pacer
        if path == "/_paced/totals":
            self.respond("200 OK", {m: t.as_dict() for m, t in pacer.totals.items()})
            return
        if path == "/_paced/reset" and method == "POST":
            pacer.totals.clear()
            self.respond("200 OK", {})
            return
        if path == "/_paced/config" and method == "POST":
            config = json.loads(body)
            pacer.configure(chunks=int(config["chunks"]), interval=float(config["interval"]))
            self.respond("200 OK", {"chunks": pacer.chunks, "interval": pacer.interval})
            return
        if path == "/v1/models":
            self.respond("200 OK", {"object": "list", "data": []})
            return
        messages = path.endswith("/messages")
        if not (method == "POST" and (messages or path.endswith("/chat/completions"))):
            self.respond("404 Not Found", {"error": {"message": "not found"}})
            return
        request = json.loads(body)
        if not request.get("stream"):
            self.respond("400 Bad Request", {"error": {"message": "this upstream only streams"}})
            return
        model = str(request.get("model"))
        options = request.get("stream_options") or {}
        totals = pacer.totals.get(model)
        if totals is None:
            totals = pacer.totals[model] = Totals()
        totals.started += 1
        kind = MessagesStream if messages else Stream
        stream = kind(self, model, pacer.chunks, options.get("include_usage") is True, totals)
        self.busy = True
        assert self.transport is not None
        first = stream.first_frame()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(first), first)
        )
        pacer.add(stream)

    def write_chunk(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        assert self.transport is not None
        self.transport.write(b"0\r\n\r\n")
        self.busy = False
        if self.buffer:  # a pipelined request waited for this stream to end
            self.data_received(b"")


async def serve(hosts: list[str], port: int) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop)
    server = await loop.create_server(lambda: Upstream(pacer), hosts, port, backlog=4096)
    async with server:
        await server.serve_forever()


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--hosts",
        default="127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4",
        help="loopback addresses to listen on (one per path, so ports never run short)",
    )
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args()
    raise_fd_limit()
    uvloop.run(serve(args.hosts.split(","), args.port))


if __name__ == "__main__":
    main()
