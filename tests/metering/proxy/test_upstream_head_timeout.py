"""A per-request head timeout: an upstream that accepts the connection but sends no
headers fails the call with UpstreamHeadTimeout within that time, the connection is
dropped (never retried, never pooled), and a prompt upstream is unaffected."""

import asyncio

import pytest

from metering.proxy.upstream import UpstreamClient, UpstreamHeadTimeout, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Upstream:
    """A loopback server counting requests; `hang` sets whether it answers them."""

    def __init__(self) -> None:
        self.hang = False
        self.requests = 0
        self.closed = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.requests += 1
                if self.hang:
                    await reader.read()  # until the client drops the connection
                    self.closed += 1
                    return
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def test_no_headers_within_the_head_timeout_is_an_upstream_timeout() -> None:
    async def scenario() -> None:
        upstream = Upstream()
        url = await upstream.start()
        client = UpstreamClient(connect_timeout=5, read_timeout=60)
        loop = asyncio.get_running_loop()
        # a pooled connection first, so the hang happens on a reused one (no stale retry)
        response = await client.post(url, b"{}", {}, head_timeout=5)
        assert response.status == 200 and await response.read() == b"{}"
        response.release()
        upstream.hang = True
        began = loop.time()
        with pytest.raises(UpstreamHeadTimeout, match=r"within 0\.3s") as caught:
            await client.post(url, b"{}", {}, head_timeout=0.3)
        waited = loop.time() - began
        assert isinstance(caught.value, UpstreamTimeout)
        assert 0.25 <= waited < 30  # fired by the head timeout, not the 60 s read timeout
        assert upstream.requests == 2  # sent once: a timed-out request is not retried
        for _ in range(100):
            if upstream.closed:
                break
            await asyncio.sleep(0.01)
        assert upstream.closed == 1  # the connection was dropped
        upstream.hang = False
        connects = client.connects
        response = await client.post(url, b"{}", {}, head_timeout=5)
        assert response.status == 200 and await response.read() == b"{}"
        assert client.connects == connects + 1  # the dropped connection was not reused
        response.release()
        await client.close()
        await upstream.stop()

    asyncio.run(scenario())


def test_without_a_head_timeout_the_read_timeout_still_applies() -> None:
    async def scenario() -> None:
        upstream = Upstream()
        url = await upstream.start()
        upstream.hang = True
        client = UpstreamClient(connect_timeout=5, read_timeout=0.3)
        with pytest.raises(UpstreamTimeout) as caught:
            await client.post(url, b"{}", {})
        assert not isinstance(caught.value, UpstreamHeadTimeout)
        await client.close()
        await upstream.stop()

    asyncio.run(scenario())


def test_headers_in_time_then_a_slow_body_are_not_cut_by_the_head_timeout() -> None:
    async def scenario() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.5)  # past the head timeout, before the body ends
            writer.write(b"cd")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = UpstreamClient(connect_timeout=5, read_timeout=5)
        response = await client.post(f"http://127.0.0.1:{port}/v1", b"{}", {}, head_timeout=0.2)
        assert await response.read() == b"abcd"
        response.release()
        await client.close()
        server.close()

    asyncio.run(scenario())
