"""Calibration only: the floor under any Python relay on this machine, a uvloop byte relay.

Each client connection gets its own upstream connection, and the bytes go across as they
arrive, both ways, with no parsing at all: the client's request reaches the upstream as it
was sent, and the upstream's response (status line, headers, chunked frames) reaches the
client byte for byte. Per relayed chunk that is one read callback, one `transport.write`,
and what the kernel and the event loop do for them (recv, send, epoll): what Reckon's
fast path costs beyond this is parsing, metering and bookkeeping. Flow control is the
least that keeps it honest: a client transport above its high-water mark pauses its
upstream's reading until it drains.

    python bench/floor_relay.py --port 8400 --upstream 127.0.0.5:8300
"""

import argparse
import asyncio
import resource

import uvloop


class Upstream(asyncio.Protocol):
    """The server's side of one upstream connection: its bytes go to the client."""

    __slots__ = ("client", "transport")

    def __init__(self, client: "Client") -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()  # type: ignore[union-attr]


class Client(asyncio.Protocol):
    """One accepted client connection; its bytes go to its own upstream connection."""

    __slots__ = ("address", "transport", "upstream", "early")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: Upstream(self), *self.address)
        except OSError:
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.transport.is_closing():  # type: ignore[union-attr]
            upstream.close()
            return
        self.upstream = upstream  # type: ignore[assignment]
        if self.early:
            upstream.write(b"".join(self.early))
            self.early = []

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(upstream), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the upstream")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = args.upstream.rpartition(":")
    uvloop.run(serve(args.port, (host, int(port))))


if __name__ == "__main__":
    main()
