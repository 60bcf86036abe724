"""A client that stops reading a stream holds a bounded number of bytes in the server:
the relay (fast path or task path) stops writing once the client's transport is above
its high-water mark, queues at most HIGH_WATER more, then pauses reading the upstream;
when the client reads again, the upstream is read again and the stream completes with
its record.

Real sockets on loopback: uvicorn with our protocol (api.proxy.server) in this process,
the proxy's own upstream client, and a local upstream that writes as fast as it may.
Kernel socket buffers are made small so that the stall reaches the server quickly.
"""

import asyncio
import socket
from typing import Any

import uvicorn

from api.proxy.call import Call
from api.proxy.server import STREAM_WRITE_HIGH_WATER, ReckonHttpProtocol
from api.proxy.wire import relay_client
from metering.models import UsageRecord
from metering.proxy.adapters import CHAT
from metering.proxy.upstream import HIGH_WATER, UpstreamClient, UpstreamResponse
from tests.api.proxy.test_relay_records import FakeApp
from tests.api.proxy.test_stream_relay_fast import make_call

Status = UsageRecord.Status
# What the server may hold for one stream: the client transport's buffer (its high-water
# mark, plus the last write past it: at most the chunks the relay task took at once,
# HIGH_WATER and one read), and the upstream chunks queued since (HIGH_WATER and one
# read). A read is at most the socket's receive buffer (made small here: 16 KiB allowed).
READ = 16 * 1024
BOUND = STREAM_WRITE_HIGH_WATER + 2 * (HIGH_WATER + READ)
SMALL_BUFFER = 4096  # the kernel's socket buffers (it doubles what it is given)
EVENTS = 1000
CONTENT = "x" * 900


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def chunk(data: str) -> bytes:
    return event(
        b'{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"' + data.encode() + b'"},'
        b'"finish_reason":null}]}'
    )


STREAM = (
    chunk("")
    + b"".join(chunk(CONTENT) for _ in range(EVENTS))
    + event(
        b'{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1000,'
        b'"total_tokens":1005}}'
    )
    + event(b"[DONE]")
)


class Upstream:
    """Streams STREAM in 1 KiB writes, each awaited (it stalls when the proxy stops
    reading); counts what the kernel accepted."""

    def __init__(self) -> None:
        self.sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body, b"{}"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(STREAM))
        for start in range(0, len(STREAM), 1024):
            piece = STREAM[start : start + 1024]
            writer.write(piece)
            await writer.drain()
            self.sent += len(piece)
        writer.close()


class Proxy:
    """An ASGI app that relays the upstream's stream as the proxy's Call does."""

    def __init__(self, upstream_url: str) -> None:
        self.url = upstream_url
        self.app = FakeApp()
        self.upstream = UpstreamClient(connect_timeout=5, read_timeout=30)
        self.response: UpstreamResponse | None = None
        self.call: Call | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        call = make_call(self.app, CHAT, "openai", False)
        call.client = relay_client(scope)
        assert call.client is not None  # our protocol offers the extension
        response = await self.upstream.post(self.url, b"{}", {})
        sock = response._conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock = call.client.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        self.call, self.response = call, response
        try:
            await call.relay_stream(response, receive, send)
        finally:
            response.release()

    def held(self) -> int:
        """Bytes this stream holds in the server: queued for the relay, and in the
        client transport's buffer."""
        assert self.response is not None and self.call is not None
        client_transport = self.call.client.transport  # type: ignore[union-attr]
        return self.response._buffered + client_transport.get_write_buffer_size()


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(3000):  # at most 30 s on a loaded machine
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]


async def scenario() -> None:
    upstream = Upstream()
    upstream_server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream_port = upstream_server.sockets[0].getsockname()[1]
    proxy = Proxy(f"http://127.0.0.1:{upstream_port}/v1/chat/completions")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        proxy, http=ReckonHttpProtocol, lifespan="off", log_level="warning", loop="none"
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    client = socket.socket()
    try:
        await wait_for(lambda: server.started, "the server started")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, listener.getsockname())
        await loop.sock_sendall(
            client, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        )
        raw = bytearray(await loop.sock_recv(client, 1024))  # the head; then it stops reading

        await wait_for(lambda: proxy.response is not None and proxy.response._paused, "paused")
        response = proxy.response
        assert response is not None and response._conn.transport is not None
        assert not response._conn.transport.is_reading()  # the upstream read is paused
        sent = upstream.sent
        for _ in range(50):  # stalled: it stays bounded and paused while nobody reads
            assert proxy.held() <= BOUND, proxy.held()
            assert response._paused
            await asyncio.sleep(0.01)
        assert sent < len(STREAM) // 2  # the stall reached the upstream, well before its end

        while not raw.endswith(b"0\r\n\r\n"):  # the client reads again: the stream completes
            data = await loop.sock_recv(client, 65536)
            assert data, "the stream was cut"
            raw += data
        await wait_for(lambda: proxy.app.rows, "the record")
    finally:
        client.close()
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        upstream_server.close()
        await proxy.upstream.close()
    assert dechunk(bytes(raw)) == STREAM  # every byte, in order
    assert upstream.sent == len(STREAM)
    [row] = proxy.app.rows
    assert (row["status"], row["output_tokens"]) == (Status.COMPLETED, EVENTS)


def test_a_client_that_does_not_read_holds_a_bounded_buffer_and_pauses_the_upstream() -> None:
    asyncio.run(scenario())
