"""The upstream client fails only with UpstreamError, whose message the proxy logs and
never shows to the caller."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import pytest

from metering.proxy.upstream import (
    HEAD_CACHE_ENTRIES,
    HEAD_CACHE_MAX_BYTES,
    HIGH_WATER,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
)

OK_EMPTY_OBJECT = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


def _serving(
    respond: Callable[[int, asyncio.StreamWriter], Awaitable[None]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A loopback upstream that reads requests with a 2-byte body (`{}`) and lets
    `respond(n, writer)` answer the n-th request it has read (over all its connections)."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
            except asyncio.IncompleteReadError:
                break
            requests += 1
            await respond(requests, writer)
        writer.close()

    return handle


@contextlib.asynccontextmanager
async def _upstream(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    read_timeout: float,
) -> AsyncIterator[tuple[UpstreamClient, str]]:
    """A loopback upstream served by `handle`, and a client with a URL on it."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(connect_timeout=5, read_timeout=read_timeout)
    try:
        yield client, f"http://127.0.0.1:{port}/v1/x"
    finally:
        await client.close()
        server.close()


def _answering(
    answer: Callable[[int], bytes],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """`_serving` that writes `answer(n)` for the n-th request."""

    async def respond(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(n))
        await writer.drain()

    return _serving(respond)


def test_a_header_that_cannot_be_sent_is_an_upstream_error() -> None:
    async def scenario() -> None:
        client = UpstreamClient(connect_timeout=1, read_timeout=1)
        with pytest.raises(UpstreamError):
            await client.post("http://127.0.0.1:9/v1", b"{}", {"Authorization": "Bearer sk-€"})
        await client.close()

    asyncio.run(scenario())


def test_a_whole_body_larger_than_the_stream_buffer_is_read_whole() -> None:
    """The back-pressure bound (HIGH_WATER) is for streams: `read()` wants the whole body,
    so the upstream read is never paused under it (it would wait for the read timeout)."""
    body = b"x" * (HIGH_WATER * 8)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 4096):
            writer.write(body[start : start + 4096])
            await writer.drain()
        writer.close()

    async def scenario() -> bytes:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = UpstreamClient(connect_timeout=5, read_timeout=30)
        try:
            response = await client.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
            return await asyncio.wait_for(response.read(), 20)
        finally:
            await client.close()
            server.close()

    assert asyncio.run(scenario()) == body


def test_a_connect_that_does_not_complete_in_time_is_an_upstream_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connect that never completes fails at the client's connect timeout as an
    UpstreamTimeout (not a bare TimeoutError nor a cancellation), and says so: not the
    read timeout's "no data from upstream"."""
    attempts = []

    async def never_connects(*args: object, **kwargs: object) -> NoReturn:
        attempts.append(args[1:3])
        await asyncio.get_running_loop().create_future()  # never done
        raise AssertionError("unreachable")

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never_connects)
        client = UpstreamClient(connect_timeout=0.01, read_timeout=60)
        try:
            with pytest.raises(UpstreamTimeout, match="connecting to 127.0.0.1:9 timed out"):
                await client.post("http://127.0.0.1:9/v1/x", b"{}", {})
        finally:
            await client.close()

    asyncio.run(scenario())
    assert attempts == [("127.0.0.1", 9)]


def test_request_heads_are_the_same_bytes_on_every_call_with_each_bodys_length() -> None:
    """The head is formatted once per URL and headers (UpstreamClient._heads) and then
    reused: each request still carries its own Content-Length and exactly its headers."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    async def scenario(port_holder: list[int]) -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        port_holder.append(port)
        client = UpstreamClient(connect_timeout=5, read_timeout=30)
        try:
            for body, headers in (
                (b'{"a":1}', {"Authorization": "Bearer sk-1", "OpenAI-Beta": "x"}),
                (b'{"a":12345}', {"Authorization": "Bearer sk-1", "OpenAI-Beta": "x"}),
                (b"{}", {"Authorization": "Bearer sk-2"}),
            ):
                response = await client.post(f"http://127.0.0.1:{port}/v1/x?q=1", body, headers)
                await response.read()
                response.release()
        finally:
            await client.close()
            server.close()

    ports: list[int] = []
    asyncio.run(scenario(ports))
    host = f"127.0.0.1:{ports[0]}".encode()
    assert seen == [
        b"POST /v1/x?q=1 HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 7\r\n"
        b"Accept-Encoding: identity\r\nAuthorization: Bearer sk-1\r\nOpenAI-Beta: x\r\n\r\n"
        b'{"a":1}',
        b"POST /v1/x?q=1 HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 11\r\n"
        b"Accept-Encoding: identity\r\nAuthorization: Bearer sk-1\r\nOpenAI-Beta: x\r\n\r\n"
        b'{"a":12345}',
        b"POST /v1/x?q=1 HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 2\r\n"
        b"Accept-Encoding: identity\r\nAuthorization: Bearer sk-2\r\n\r\n{}",
    ]


@pytest.mark.parametrize("value", ["Bearer sk-€", "Bearer sk\r\nX-Injected: 1", "a\nb"])
def test_a_header_value_that_cannot_be_sent_fails_every_time(value: str) -> None:
    """Refused before anything is sent, on every call (a refused head is never kept)."""

    async def scenario() -> None:
        client = UpstreamClient(connect_timeout=1, read_timeout=1)
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await client.post("http://127.0.0.1:9/v1", b"{}", {"Authorization": value})
        assert client.connects == 0
        await client.close()

    asyncio.run(scenario())


def test_a_reused_connection_still_times_out_a_response_that_stalls() -> None:
    """The read timer belongs to the connection and outlives its exchanges: a second
    exchange on the kept-alive connection, whose upstream sends its head and then
    nothing, still fails with the read timeout's UpstreamTimeout; once the connection is
    closed no timer holds it."""
    # the first answer whole; then the head, then silence: the body never comes
    handle = _answering(lambda n: OK_EMPTY_OBJECT if n == 1 else OK_EMPTY_OBJECT[:-2])

    async def scenario() -> None:
        async with _upstream(handle, read_timeout=0.2) as (client, url):
            first = await client.post(url, b"{}", {})
            assert await first.read() == b"{}"
            conn = first._conn
            first.release()
            second = await client.post(url, b"{}", {})
            assert second._conn is conn and client.connects == 1  # the same connection
            assert conn.idle_timer is not None
            with pytest.raises(UpstreamTimeout, match="no data from upstream"):
                await asyncio.wait_for(second.read(), 30)
            assert conn.closed and conn.idle_timer is None
            second.release()

    asyncio.run(scenario())


def test_a_pooled_connection_lets_its_read_timer_lapse_and_arms_it_again() -> None:
    """An idle connection in the pool times nothing: its timer lapses when it fires, and
    the next exchange on it arms one again (so a stall after a quiet spell is caught)."""

    handle = _answering(lambda n: OK_EMPTY_OBJECT)

    async def scenario() -> None:
        async with _upstream(handle, read_timeout=0.05) as (client, url):
            first = await client.post(url, b"{}", {})
            await first.read()
            conn = first._conn
            first.release()
            for _ in range(200):  # until the timer fired and found nothing to time
                if conn.idle_timer is None:
                    break
                await asyncio.sleep(0.05)
            assert conn.idle_timer is None and not conn.closed
            second = await client.post(url, b"{}", {})
            assert second._conn is conn and conn.idle_timer is not None
            assert await second.read() == b"{}"
            second.release()

    asyncio.run(scenario())


def _heads_then_bodies(delays: list[float | None]) -> Any:
    """A loopback upstream that answers its n-th request with a head at once and the
    2-byte body `delays[n - 1]` seconds later (None: never)."""

    async def respond(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(OK_EMPTY_OBJECT[:-2])
        await writer.drain()
        delay = delays[n - 1]
        if delay is not None:
            await asyncio.sleep(delay)
            writer.write(b"{}")
            await writer.drain()

    return _serving(respond)


def _reused_exchange(delays: list[float | None], check: Callable[..., Awaitable[None]]) -> None:
    """One exchange on a fresh connection, then, 0.6 s later, a second on the same one
    (its timer armed by the first, due 1 s after it began), handed to `check`."""

    async def scenario() -> None:
        async with _upstream(_heads_then_bodies(delays), read_timeout=1.0) as (client, url):
            first = await client.post(url, b"{}", {})
            await first.read()
            first.release()
            await asyncio.sleep(0.6)
            second = await client.post(url, b"{}", {})
            assert client.connects == 1
            await check(second)
            second.release()

    asyncio.run(scenario())


def test_a_pooled_connections_standing_timer_never_fails_a_later_healthy_exchange() -> None:
    """The second exchange's body comes 0.7 s after its head: past the first exchange's
    deadline, within its own (review of the standing timer)."""

    async def check(second: Any) -> None:
        assert await asyncio.wait_for(second.read(), 5) == b"{}"

    _reused_exchange([0, 0.7], check)


def test_a_stall_on_a_reused_connection_times_out_at_its_own_deadline() -> None:
    async def check(second: Any) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(second.read(), 5)
        assert loop.time() - began >= 0.95  # its own deadline, not the first exchange's

    _reused_exchange([0, None], check)


def test_the_head_cache_stays_small_however_callers_vary_forwarded_headers() -> None:
    """A forwarded header (anthropic-beta) may carry any value on every call: the cache
    holds at most HEAD_CACHE_ENTRIES heads of at most HEAD_CACHE_MAX_BYTES (review)."""
    handle = _answering(lambda n: OK_EMPTY_OBJECT)

    async def scenario() -> None:
        async with _upstream(handle, read_timeout=30) as (client, url):
            for n in range(HEAD_CACHE_ENTRIES + 50):
                value = f"beta-{n}" + ("x" * HEAD_CACHE_MAX_BYTES if n % 2 else "")
                response = await client.post(url, b"{}", {"anthropic-beta": value})
                assert await response.read() == b"{}"
                response.release()
                held = client._heads.values()
                assert len(held) <= HEAD_CACHE_ENTRIES
                assert all(len(a) + len(b) <= HEAD_CACHE_MAX_BYTES for a, b in held)
            assert client._heads  # ordinary heads are still kept

    asyncio.run(scenario())
