"""A lean pooled HTTP/1.1 client for the proxy's upstream calls.

Why not aiohttp or httpx: measured on this machine with the same server and simulator, a
bare pass-through proxy reached 9.8k req/s with aiohttp's client and 19.4k req/s with
this one (bench/, README). The proxy needs one thing done fast: POST a body, get status
and headers, then the body whole or as it streams. Parsing is httptools (llhttp, the
parser uvicorn uses); everything here is connection pooling, flow control and timeouts.

- Keep-alive pool per (scheme, host, port); idle connections closed by the peer leave
  the pool as soon as the close is seen.
- A request that fails on a *reused* connection before a single response byte arrives is
  retried once on a new connection (the peer closed it while idle, so it never saw the
  request); anything else fails with UpstreamError and is never retried.
- Read timeout is an idle timeout: it fires when no byte has arrived for that long.
- A per-request head timeout (`post(head_timeout=...)`) bounds the wait for the
  response headers, so a router can give up on a target that accepted the connection
  but does not answer and try another one; the connection is discarded, never retried.
- Streaming applies backpressure: reading from the upstream pauses while more than
  HIGH_WATER bytes wait for the client, so a client that does not read holds at most
  HIGH_WATER plus one read of the upstream's bytes here (plus what the client's own
  transport buffers, bounded by the server).
- A stream relay may take the body in the read callback itself (`UpstreamResponse.relay`):
  while its consumer is parked with nothing pending, each read is offered to `relay`
  first, and only what it declines wakes the consumer. This is what lets a plain chunk
  reach the client without a task step (api.proxy.call).
- Bodies are requested uncompressed (Accept-Encoding: identity).
"""

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 16 * 1024  # bytes buffered for a slow client before the upstream read pauses
# Seconds: uvloop fires timers on whole milliseconds, so a shorter re-arm fires at once.
TIMER_RESOLUTION = 0.001
# Request heads kept formatted (`UpstreamClient._heads`): a route's heads are the same few,
# but a caller may send headers we forward (anthropic-beta, OpenAI-Beta) with any value,
# so the cache is bounded in entries and takes only heads of an ordinary size: at most
# 256 x 2 KiB held, however callers vary them.
HEAD_CACHE_ENTRIES = 256
HEAD_CACHE_MAX_BYTES = 2048


class UpstreamError(Exception):
    """The upstream could not be reached, or its response broke off or was malformed."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamHeadTimeout(UpstreamTimeout):
    """No response headers within the request's head timeout."""


_Target = tuple[str, str, int, str]  # scheme, host, port, path


class _Connection(asyncio.Protocol):
    """One upstream connection, reused from the pool for one exchange at a time.

    Its read timer outlives the exchanges: armed by the first response that needs one, it
    checks the response in progress when it fires (`check_idle`: failed if nothing came
    for the read timeout, else armed again for the rest) and lapses once no response is
    being timed. A call on a kept-alive connection therefore arms no timer of its own;
    each was a libuv timer started and cancelled per call (`call_later` plus `cancel`,
    about 3-6 us on this machine). The deadline is the same: the last byte received plus
    the read timeout."""

    __slots__ = (
        "key",
        "parser",
        "transport",
        "response",
        "closed",
        "reused",
        "keep_alive",
        "idle_timer",
    )

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.reused = False
        self.keep_alive = False  # read at headers-complete: llhttp resets it afterwards
        self.idle_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes on an idle connection: not ours to reuse
            self.abort()
            return
        response._activity = response._loop.time()
        response._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamError(f"malformed upstream response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_idle_timer()
        if self.response is not None:
            self.response._lost(exc)

    # the read timer (see the class docstring)
    def time_reads(self, response: "UpstreamResponse") -> None:
        if self.idle_timer is None:
            self.idle_timer = response._loop.call_later(response._read_timeout, self.check_idle)

    def check_idle(self) -> None:
        response = self.response
        if response is None or not response._timed:
            self.idle_timer = None  # nothing to time: the next response arms it again
            return
        idle = response._loop.time() - response._activity
        if idle >= response._read_timeout:
            self.idle_timer = None
            response._timed = False
            response._fail(
                UpstreamTimeout(f"no data from upstream for {response._read_timeout:g}s")
            )
            self.abort()
        else:
            self.idle_timer = response._loop.call_later(  # >= 1 ms: uvloop's resolution
                max(response._read_timeout - idle, TIMER_RESOLUTION), self.check_idle
            )

    def _stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not response._headers_ready.done():
            response._headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._complete()

    def abort(self) -> None:
        self.closed = True
        self._stop_idle_timer()  # a closed connection is not held until its timer fires
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """Status and headers once awaited from `post`; the body via `read`, or as it
    streams via `next_chunk` (or `iter_chunks`)."""

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_loop",
        "_chunks",
        "_buffered",
        "_waiter",
        "_headers_ready",
        "_done",
        "_error",
        "_activity",
        "_received",
        "_timed",
        "_read_timeout",
        "_paused",
        "_pool",
        "relay",
        "_streaming",
    )

    def __init__(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        pool: "UpstreamClient",
    ) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._loop = loop
        self._pool = pool
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._headers_ready: asyncio.Future[None] = loop.create_future()
        self._done = False
        self._error: UpstreamError | None = None
        self._activity = loop.time()
        self._received = False
        self._paused = False
        self._streaming = False  # next_chunk consumes the body (read() wants it whole)
        self._read_timeout = read_timeout
        self._timed = True  # its connection's read timer checks it (_Connection.check_idle)
        conn.time_reads(self)
        # Offered each read while the consumer waits with nothing pending; True: it took
        # the bytes (they are never seen by next_chunk), False: they queue as usual.
        self.relay: Callable[[bytes], bool] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    # fed by the connection
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            waiter = self._waiter
            # the consumer is parked and everything before `data` has left: order holds
            if waiter is not None and not waiter.done() and not self._chunks and relay(data):
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if (
            self._buffered > HIGH_WATER
            and self._streaming
            and not self._paused
            and self._conn.transport
        ):
            self._conn.transport.pause_reading()
            self._paused = True
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._stop_timer()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        self._stop_timer()
        if not self._headers_ready.done():
            self._headers_ready.set_exception(error)
            self._headers_ready.exception()  # retrieved: the caller may be gone already
        self._wake()

    def _lost(self, exc: Exception | None) -> None:
        self._fail(UpstreamError(f"upstream connection closed ({exc or 'EOF'})"))

    def _stop_timer(self) -> None:
        self._timed = False  # the connection's timer lets it be (and lapses if idle)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # consumer API
    async def read(self) -> bytes:
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def next_chunk(self) -> bytes | None:
        """The body's bytes that arrived since the last call (waiting for some), None at
        its end; raises UpstreamError if it broke off. A coroutine, not an async
        generator: a generator left at its `yield` (a relay stops at the terminal event)
        is closed by the event loop's finalizer hook, a task and a wake-up of the loop per
        stream, and its first iteration registers it in the loop's weak set."""
        self._streaming = True
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused and self._conn.transport:
                    self._paused = False
                    self._conn.transport.resume_reading()
                return data
            if self._done:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """`next_chunk` as an async iterator (for callers that read to the end)."""
        while (data := await self.next_chunk()) is not None:
            yield data
            del data  # not held while the stream waits for its next read

    def release(self) -> None:
        """Give the connection back to the pool if the exchange finished cleanly."""
        self._stop_timer()
        conn = self._conn
        conn.response = None
        if self._done and self._error is None and not conn.closed and conn.keep_alive:
            self._pool._put(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Abandon the exchange now (the connection is not reused)."""
        self._fail(UpstreamError("closed by the proxy"))
        self._conn.abort()


def _head_timed_out(response: UpstreamResponse, head_timeout: float | None) -> None:
    if response._headers_ready.done():  # the headers won the race
        return
    response._fail(
        UpstreamHeadTimeout(f"no response headers from upstream within {head_timeout:g}s")
    )
    response._conn.abort()


class UpstreamClient:
    def __init__(
        self, *, connect_timeout: float, read_timeout: float, max_idle_per_host: int = 512
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        # a request head's bytes around its Content-Length value, by URL and headers:
        # the same few per route, formatted and checked once instead of on every call
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.connects = 0  # new connections opened (a pool that works keeps this small)

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamError(f"unsupported upstream URL {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            target = (parts.scheme, parts.hostname, port, path)
            if len(self._targets) < 10_000:
                self._targets[url] = target
        return target

    def _put(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < self._max_idle:
            conn.reused = True
            idle.append(conn)
        else:
            conn.abort()

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        conn = self._take_idle(key)
        if conn is not None:
            return conn
        scheme, host, port = key
        self.connects += 1
        loop = asyncio.get_running_loop()
        ssl_context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        try:
            # a deadline on this task, not wait_for's task per connection
            async with asyncio.timeout(self._connect_timeout):
                _, opened = await loop.create_connection(
                    lambda: _Connection(key),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host if ssl_context else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc}") from exc
        return opened

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        head_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send the request and return at the response headers. `head_timeout` (seconds,
        None: only the idle read timeout) bounds the whole wait for them, connecting
        included; past it the exchange fails with UpstreamHeadTimeout."""
        scheme, host, port, path = self._target(url)
        key = (scheme, host, port)
        head_key = (url, tuple(headers.items()))
        head = self._heads.get(head_key)
        if head is None:
            head = self._head(scheme, host, port, path, headers)
            if len(head[0]) + len(head[1]) <= HEAD_CACHE_MAX_BYTES:
                if len(self._heads) >= HEAD_CACHE_ENTRIES:
                    self._heads.clear()
                self._heads[head_key] = head
        request = b"".join((head[0], b"%d" % len(body), head[1], body))
        loop = asyncio.get_running_loop()
        deadline = None if head_timeout is None else loop.time() + head_timeout
        for attempt in (1, 2):
            if deadline is None:
                conn = await self._connect(key)
            else:
                conn = await self._connect_by(key, deadline, head_timeout)
            response = UpstreamResponse(conn, loop, self._read_timeout, self)
            conn.response = response
            assert conn.transport is not None
            conn.transport.write(request)
            head_timer = (
                None
                if deadline is None
                else loop.call_at(deadline, _head_timed_out, response, head_timeout)
            )
            try:
                await response._headers_ready
                return response
            except UpstreamError as exc:
                stale = (
                    conn.reused
                    and not response._received
                    and attempt == 1
                    and not isinstance(exc, UpstreamHeadTimeout)
                )
                response._stop_timer()
                conn.abort()
                if not stale:
                    raise
            finally:
                if head_timer is not None:
                    head_timer.cancel()
        raise AssertionError("unreachable")

    @staticmethod
    def _head(
        scheme: str, host: str, port: int, path: str, headers: dict[str, str]
    ) -> tuple[bytes, bytes]:
        """A request head, as the bytes before and after its Content-Length value."""
        default_port = 443 if scheme == "https" else 80
        before = (
            f"POST {path} HTTP/1.1\r\nHost: {host if port == default_port else f'{host}:{port}'}\r\n"
            "Content-Length: "
        )
        after = ["\r\nAccept-Encoding: identity\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise UpstreamError(f"invalid value for header {name}")
            after.append(f"{name}: {value}\r\n")
        after.append("\r\n")
        try:
            return before.encode("latin-1"), "".join(after).encode("latin-1")
        except UnicodeEncodeError as exc:  # e.g. a credential pasted with a stray character
            raise UpstreamError("a request header is not latin-1") from exc

    async def _connect_by(
        self, key: tuple[str, str, int], deadline: float, head_timeout: float | None
    ) -> _Connection:
        """`_connect`, failing as a head timeout if the deadline passes first."""
        conn = self._take_idle(key)
        if conn is not None:  # the common case: no timer task
            return conn
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._connect(key), max(remaining, 0))
        except TimeoutError as exc:
            raise UpstreamHeadTimeout(
                f"no response headers from upstream within {head_timeout:g}s"
            ) from exc

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
