"""The upstream client fails only with UpstreamError, whose message the proxy logs and
never shows to the caller."""

import asyncio
import socket
from typing import NoReturn

import pytest

from metering.proxy import upstream
from metering.proxy.upstream import HIGH_WATER, UpstreamClient, UpstreamError, UpstreamTimeout


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


class _Resolver:
    """Stands in for the loop's getaddrinfo: counts calls, answers `addresses`."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int, **kwargs: object) -> list[tuple]:
        self.calls.append(host)
        await asyncio.sleep(0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.addresses]


async def _answering_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_host_name_is_resolved_once_for_many_new_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New connections (a burst of streams opens one each) do not wait for the name to be
    resolved again: once for the burst, then from memory."""
    resolver = _Resolver(["127.0.0.1"])

    async def scenario() -> int:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver)
        server, port = await _answering_server()
        client = UpstreamClient(connect_timeout=5, read_timeout=5)
        url = f"http://upstream.test:{port}/v1/x"
        try:
            # not released: every call needs a connection of its own
            together = await asyncio.gather(*(client.post(url, b"{}", {}) for _ in range(5)))
            later = [await client.post(url, b"{}", {}) for _ in range(3)]
            assert all(r.status == 200 for r in [*together, *later])
            return client.connects
        finally:
            await client.close()
            server.close()

    assert asyncio.run(scenario()) == 8
    assert resolver.calls == ["upstream.test"]


def test_old_addresses_serve_while_they_are_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _Resolver(["127.0.0.1"])
    monkeypatch.setattr(upstream, "HOST_ADDRESSES_SECONDS", 0.0)

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver)
        server, port = await _answering_server()
        client = UpstreamClient(connect_timeout=5, read_timeout=5)
        url = f"http://upstream.test:{port}/v1/x"
        try:
            await client.post(url, b"{}", {})
            resolver.addresses = ["127.0.0.9"]  # moved: the refresh learns it
            assert (await client.post(url, b"{}", {})).status == 200  # on the old address
            await asyncio.sleep(0.05)
            assert client._addresses["upstream.test"][0] == ["127.0.0.9"]
        finally:
            await client.close()
            server.close()

    asyncio.run(scenario())
    assert resolver.calls == ["upstream.test", "upstream.test"]


def test_the_next_address_is_tried_and_a_failed_connect_forgets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """127.0.0.5 refuses (nothing listens there): the next address answers. Once every
    address refuses, the name is resolved again at the next connect."""
    resolver = _Resolver(["127.0.0.5", "127.0.0.1"])

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver)
        server, port = await _answering_server()
        client = UpstreamClient(connect_timeout=5, read_timeout=5)
        url = f"http://upstream.test:{port}/v1/x"
        try:
            assert (await client.post(url, b"{}", {})).status == 200
            server.close()
            await server.wait_closed()
            with pytest.raises(UpstreamError, match="cannot connect"):
                await client.post(url, b"{}", {})
            with pytest.raises(UpstreamError, match="cannot connect"):
                await client.post(url, b"{}", {})
        finally:
            await client.close()

    asyncio.run(scenario())
    assert resolver.calls == ["upstream.test", "upstream.test"]
