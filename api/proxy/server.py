"""uvicorn's httptools protocol, writing each whole response in one call.

uvicorn writes a response's status line and headers as soon as the application sends
`http.response.start`, and its body on `http.response.body`: two writes, two system
calls and, on loopback or a LAN, two TCP segments the client wakes up for. When the
start carries a Content-Length (the proxy's whole responses, Django's), the body follows
at once, so here the head is held back and leaves in the same write as the body. A
stream's head (no Content-Length) is held until the end of the event loop's turn: the
relay writes its first chunk in the same turn when the upstream sent its head and first
event together, and the two leave in one write (2,000 paced streams: one write and one
segment a stream fewer); a head that no chunk took along is written on the next turn.

Measured with the proxy benchmark's load on this machine (wrk at c=32 through Reckon,
interleaved runs): 445-482 us of machine CPU per request with one write, 485-547 us with
two; 3.5-3.8k against 3.1-3.4k requests/s.

A stream relay gets more: the ASGI extension "reckon.relay" in the scope (the cycle
itself, api.proxy.wire.RelayClient). With it the proxy writes a stream's chunks from the
upstream connection's read callback, with no task step and no ASGI message per chunk:
`write_chunk` frames and writes one chunk as uvicorn's send would, and may only be used
when `ready()` (the response started chunked, is not complete, the client is there and
its transport is not above its high-water mark: otherwise the app takes the ordinary,
awaiting send, which waits for the client to drain). `start_relay` bounds the client
transport's write buffer to STREAM_WRITE_HIGH_WATER and registers a callback for the
client going away, in place of a task waiting on `receive`.

Memory per open stream: uvicorn gives every connection three empty deques (its pipeline
queue and the waiter queues of two asyncio.Events), and CPython allocates a deque's first
64-slot block up front, about 760 bytes each (tracemalloc, 2,000 streams open). Here they
are lists: the same operations, 56 bytes empty.

The keep-alive timeout: uvicorn arms a timer when a response completes and cancels it
when the next request's bytes arrive, a libuv timer started and cancelled for every call
on a kept-alive connection (about 3-6 us here). Here a connection keeps one timer that
outlives its requests: it notes when the connection went idle, and when it fires it closes
a connection idle for the whole timeout, arms itself again for the rest of a shorter idle
spell, and lapses while a request is in progress (the next response's end arms it again).
The deadline is uvicorn's: idle since the last response completed, plus the timeout.

A connection's addresses (the scope's "server" and "client") come from the transport's
"sockname" and "peername", which uvloop reads once when it accepts the connection.
uvicorn asks the transport for a socket object instead, and uvloop makes a new one for
each question: four getsockname and one getpeername system calls a connection beyond
the accept's own one of each (strace, 1,000 streams: 5.0 getsockname and 2.0
getpeername a stream, 1.0 and 1.0 here). The values are the same; a transport that
offers no "sockname" or "peername" takes uvicorn's way.

Everything else (parsing, pipelining, flow control, limits, shutdown) is uvicorn's own;
the changes are which class handles a request's cycle, the keep-alive timer's life and
where a connection's addresses come from.
"""

import asyncio
from collections.abc import Callable
from itertools import chain
from typing import Any

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from api.proxy.wire import RELAY_EXTENSION
from metering.proxy.upstream import TIMER_RESOLUTION


class _Capture:
    """Stands in for the transport while uvicorn formats a message, keeping the bytes."""

    __slots__ = ("parts", "closed")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


# The bytes uvicorn refuses in a header name (HEADER_RE) and in a value (HEADER_VALUE_RE),
# as translate() tables of the bytes allowed: `joined.translate(None, allowed)` keeps only
# the refused ones. One C pass over a response's names (values), where the regex search
# costs about 140 instructions a byte (callgrind, ~1% of a controlled call).
_NAME_ALLOWED = bytes(b for b in range(256) if not HEADER_RE.match(bytes((b,))))
_VALUE_ALLOWED = bytes(b for b in range(256) if not HEADER_VALUE_RE.match(bytes((b,))))


# Bytes a stream's client transport buffers before uvicorn's flow control pauses writing
# (and the relay stops reading its upstream, metering.proxy.upstream.HIGH_WATER).
STREAM_WRITE_HIGH_WATER = 16 * 1024

# A chunk's size line, as uvicorn formats it (b"%x\r\n"), for the sizes a stream's reads
# usually have (an event or a few, under 4 KiB): a list index and a join cost half of
# formatting it per chunk (about 150 KiB a process).
_CACHED_SIZE_LINES = 4096
_CHUNK_SIZE_LINES = [b"%x\r\n" % size for size in range(_CACHED_SIZE_LINES)]


class CoalescingCycle(RequestResponseCycle):
    _head: bytes | None = None
    _on_disconnect: Callable[[], None] | None = None

    # --- the "reckon.relay" extension -----------------------------------------------

    def start_relay(self, on_disconnect: Callable[[], None]) -> None:
        """The app relays a stream on this response: bound the client's write buffer and
        call `on_disconnect` (once) if the client goes before the response completes, or
        at once if it has gone already."""
        self._on_disconnect = on_disconnect
        if self.disconnected:
            self.client_lost()
            return
        self.transport.set_write_buffer_limits(high=STREAM_WRITE_HIGH_WATER)

    def ready(self) -> bool:
        return (
            self.response_started
            and not self.response_complete
            and not self.disconnected
            and not self.flow.write_paused
            and self.chunked_encoding is True
        )

    def write_chunk(self, body: bytes) -> None:
        """One body chunk, framed as uvicorn's send frames it; only when `ready()`."""
        size = len(body)
        head = self._head
        if head is not None:  # the stream's head, held back until its first chunk
            self._head = None
            self.transport.write(b"%b%x\r\n%b\r\n" % (head, size, body))
        elif size < _CACHED_SIZE_LINES:
            self.transport.write(b"".join((_CHUNK_SIZE_LINES[size], body, b"\r\n")))
        else:
            self.transport.write(b"%x\r\n%b\r\n" % (size, body))

    def client_lost(self) -> None:
        callback = self._on_disconnect
        if callback is not None and self.disconnected:
            self._on_disconnect = None
            callback()

    async def run_asgi(self, app: Any) -> None:
        async def flushing(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                # uvicorn closes the connection of a started response that the app left
                # unfinished (it failed, or returned): a stream head still held goes
                # first, so the client sees a broken 200 stream (which SDKs do not
                # retry) rather than no response at all
                self._flush_head()

        try:
            await super().run_asgi(flushing)
        finally:
            # The scope offers this cycle to the app (cycle -> scope -> cycle): left in
            # place, every request's cycle, scope and headers were cyclic garbage that
            # only the collector freed (18-19k objects a young collection, 3.5-7.5 ms
            # pauses at the young threshold of 20,000 then, part of the c=1 p99 tail).
            # Broken here, refcounting frees them when the connection moves on.
            self.scope["extensions"].pop(RELAY_EXTENSION, None)
            self._on_disconnect = None

    # --- coalescing ------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        if (
            message["type"] == "http.response.start"
            and not self.response_started
            and not self.disconnected
        ):
            head = self._whole_head(message)
            if head is not None:
                self._head = head
                if self.chunked_encoding:
                    # a stream's head: out with its first chunk if that comes at once
                    # (written in this loop turn), else on the next turn on its own
                    asyncio.get_running_loop().call_soon(self._flush_head)
                return
            if any(name.lower() == b"content-length" for name, _ in message.get("headers", ())):
                self._head = b"".join((await self._formatted(message)).parts)
                return
        head = self._head
        if head is None:
            await super().send(message)
            return
        self._head = None
        if not self.chunked_encoding and self._whole_body(head, message):
            return
        transport = self.transport
        capture = await self._formatted(message)
        if self.disconnected:
            return
        transport.write(head + b"".join(capture.parts))
        if capture.closed:
            transport.close()

    def _flush_head(self) -> None:
        """A stream's head that no chunk took along: write it now."""
        head = self._head
        if head is not None:
            self._head = None
            # not after the connection closed (lost, or closed by the server because the
            # app failed right after starting the response)
            if not self.disconnected and not self.transport.is_closing():
                self.transport.write(head)

    def _whole_head(self, message: Any) -> bytes | None:
        """The head of a response with a Content-Length, or of a stream (chunked: no
        Content-Length), formatted as uvicorn would, in one pass (two regex scans for all
        headers instead of two per header); None for anything unusual (uvicorn's own path
        takes it)."""
        if self.access_log or self.flow.write_paused or self.scope["method"] == "HEAD":
            return None
        length = None
        names = []
        values = []
        content = [STATUS_LINE[message["status"]]]
        for name, value in chain(self.default_headers, message.get("headers", ())):
            name = name.lower()
            if name == b"content-length":
                length = value
            elif name in (b"transfer-encoding", b"connection"):
                return None
            names.append(name)
            values.append(value)
            content += (name, b": ", value, b"\r\n")
        status = message["status"]
        if length is None and status in (204, 304):
            return None  # no body at all: uvicorn's path
        if b"".join(names).translate(None, _NAME_ALLOWED):
            return None  # an invalid name: uvicorn's path refuses it
        if b"".join(values).translate(None, _VALUE_ALLOWED):
            raise RuntimeError("Invalid HTTP header value.")
        self.response_started = True
        self.waiting_for_100_continue = False
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        if length is None:
            self.expected_content_length = 0
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        else:
            self.expected_content_length = int(length.decode())
            self.chunked_encoding = False
        content.append(b"\r\n")
        return b"".join(content)

    def _whole_body(self, head: bytes, message: Any) -> bool:
        """Write head and body at once and complete the response, if `message` is the
        whole body that the head announced."""
        if (
            message["type"] != "http.response.body"
            or message.get("more_body", False)
            or self.disconnected
            or self.flow.write_paused
        ):
            return False
        body = message.get("body", b"")
        if len(body) != self.expected_content_length:
            return False
        self.expected_content_length = 0
        self.transport.write(head + body)
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True

    async def _formatted(self, message: Any) -> _Capture:
        """What uvicorn would write for `message` (its state moves on as if written)."""
        transport, capture = self.transport, _Capture()
        self.transport = capture  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
        return capture


def local_address(transport: asyncio.Transport) -> tuple[str, int | None] | None:
    """uvicorn's get_local_addr, from the address the transport holds: (host, port) of a
    TCP socket (IPv6's flow and scope fields dropped), (path, None) of a unix one."""
    info = transport.get_extra_info("sockname")
    if isinstance(info, tuple):
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return get_local_addr(transport)  # none held: uvicorn asks the socket


def remote_address(transport: asyncio.Transport) -> tuple[str, int] | None:
    """uvicorn's get_remote_addr, from the address the transport holds: (host, port) of a
    TCP peer, None for a unix socket's."""
    info = transport.get_extra_info("peername")
    if isinstance(info, tuple):
        return (str(info[0]), int(info[1]))
    if info is not None:
        return None  # a unix socket's peer (a path or ""): uvicorn gives no address
    return get_remote_addr(transport)  # none held: uvicorn asks the socket


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (`appendleft`, `pop`, truth), as a list."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _lean(event: asyncio.Event) -> None:
    """An unused Event keeps its waiters in a list: asyncio.Event only appends, removes
    and iterates them."""
    event._waiters = []  # type: ignore[attr-defined]


def _coalescing(cycle: RequestResponseCycle) -> None:
    """Make uvicorn's cycle a CoalescingCycle whose scope offers the relay extension."""
    if type(cycle) is RequestResponseCycle:
        cycle.__class__ = CoalescingCycle
        cycle.scope.setdefault("extensions", {})[RELAY_EXTENSION] = cycle


class ReckonHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        # loop time since when the connection waits for a request (None: one is in progress)
        self._idle_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's connection_made, with the addresses the transport already holds
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = local_address(transport)
        self.client = remote_address(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        _lean(self.flow._is_writable_event)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:  # a new cycle, nobody waits on it yet
            _lean(cycle.message_event)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Before the task's coroutine is made (at once, or for a pipelined request when
        # the one before it completes): it runs CoalescingCycle.run_asgi, and from its
        # first step on the cycle's send is the coalescing one.
        _coalescing(cycle)
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        self._idle_since = None
        timer = self.timeout_keep_alive_task
        if timer is not None:  # not held until it fires
            self.timeout_keep_alive_task = None
            timer.cancel()
        if isinstance(cycle, CoalescingCycle):
            cycle.client_lost()

    # --- the keep-alive timer (module docstring) ------------------------------------

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn's: cancel the timer (a request's bytes came, or a response completed)
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, except that the idle connection's timer is the standing one
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts: not idle
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def timeout_keep_alive_handler(self) -> None:
        idle_since = self._idle_since
        if idle_since is None:  # a request in progress: the next response arms it again
            self.timeout_keep_alive_task = None
            return
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            # at least 1 ms: uvloop rounds a timer to whole milliseconds, and a shorter
            # one would fire again at once, round after round, until the deadline
            self.timeout_keep_alive_task = self.loop.call_later(
                max(left, TIMER_RESOLUTION), self.timeout_keep_alive_handler
            )
            return
        self.timeout_keep_alive_task = None
        super().timeout_keep_alive_handler()
