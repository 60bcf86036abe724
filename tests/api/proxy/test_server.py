"""The coalescing response cycle: a whole response leaves in one write, streams as before."""

import asyncio
import gc
import logging
import weakref
from collections import deque
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from api.proxy.server import CoalescingCycle, ReckonHttpProtocol
from api.proxy.wire import RELAY_EXTENSION


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def resume_reading(self) -> None: ...


def cycle(
    transport: Transport,
    *,
    keep_alive: bool = True,
    method: str = "POST",
    defaults: list[tuple[bytes, bytes]] | None = None,
) -> tuple[CoalescingCycle, list[int]]:
    completed: list[int] = []
    scope = {"type": "http", "method": method, "http_version": "1.1", "headers": []}
    return (
        CoalescingCycle(
            scope=scope,  # type: ignore[arg-type]
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=logging.getLogger("test"),
            access_logger=logging.getLogger("test"),
            access_log=False,
            default_headers=defaults or [],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: completed.append(1),
        ),
        completed,
    )


def start(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def test_a_whole_response_leaves_in_one_write() -> None:
    transport = Transport()
    c, completed = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"application/json"), (b"content-length", b"2")]))
        assert transport.writes == []  # held back until the body
        await c.send({"type": "http.response.body", "body": b"{}"})

    asyncio.run(scenario())
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    ]
    assert completed == [1] and c.response_complete and not transport.closed


def test_a_stream_head_leaves_with_its_first_chunk_and_chunks_follow() -> None:
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"text/event-stream")]))
        assert transport.writes == []  # held back until the first chunk (this loop turn)
        await c.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"", "more_body": False})
        await asyncio.sleep(0)  # the head's flush finds nothing left to write

    asyncio.run(scenario())
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert transport.writes[1] == b"0\r\n\r\n"


def test_a_stream_head_with_no_chunk_in_its_turn_leaves_on_the_next() -> None:
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"text/event-stream")]))
        assert transport.writes == []
        await asyncio.sleep(0)
        assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")
        c.write_chunk(b"data: 1\n\n")
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n"]


def test_a_stream_head_is_not_written_to_a_client_that_left() -> None:
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"text/event-stream")]))
        c.disconnected = True
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert transport.writes == []


def test_a_stream_head_is_not_written_after_the_server_closed_the_connection() -> None:
    # the app failed right after starting the stream: uvicorn closes the transport in the
    # same turn, before the head's flush runs (a write then would raise in the callback)
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"text/event-stream")]))
        transport.close()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert transport.writes == []


def test_an_app_that_fails_right_after_starting_a_stream_still_sends_its_head() -> None:
    # the client gets a 200 head and then the close (a broken stream, not retried by the
    # SDKs), never a connection closed with no response (retried: a second upstream call)
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await send(start([(b"content-type", b"text/event-stream")]))
        raise ValueError("a bug")

    async def returning(scope: Any, receive: Any, send: Any) -> None:
        await send(start([(b"content-type", b"text/event-stream")]))

    for app in (failing, returning):
        transport = Transport()
        c, _ = cycle(transport)
        c.scope["extensions"] = {}
        asyncio.run(c.run_asgi(app))
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
        assert transport.closed


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("relay", [True, False], ids=["write_chunk", "send"])
def test_a_stream_is_byte_for_byte_uvicorns(keep_alive: bool, relay: bool) -> None:
    """Head (one pass, chunked), first chunk, more chunks, the end: the bytes uvicorn's own
    send writes, with or without the relay's write_chunk."""
    headers = [(b"content-type", b"text/event-stream"), (b"x-reckon-request-id", b"5f0c")]
    date = [(b"date", b"Tue, 01 Dec 2026 23:59:00 GMT")]

    async def scenario(target: CoalescingCycle) -> None:
        await target.send(start(headers))
        for body in (b"data: 1\n\n", b"data: 2\n\n"):
            if relay and type(target) is CoalescingCycle:
                target.write_chunk(body)
            else:
                await target.send({"type": "http.response.body", "body": body, "more_body": True})
        await target.send({"type": "http.response.body", "body": b"data: end\n\n"})
        await asyncio.sleep(0)

    ours, theirs = Transport(), Transport()
    c, ours_done = cycle(ours, keep_alive=keep_alive, defaults=date)
    u, theirs_done = cycle(theirs, keep_alive=keep_alive, defaults=date)
    u.__class__ = RequestResponseCycle  # type: ignore[assignment]  # uvicorn's own
    asyncio.run(scenario(c))
    asyncio.run(scenario(u))
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert len(ours.writes) == 3 and len(theirs.writes) == 4
    assert ours_done == theirs_done == [1] and c.response_complete
    assert ours.closed is theirs.closed is (not keep_alive)


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize(
    ("method", "status", "bodies"),
    [
        ("POST", 200, [b""]),  # an empty stream: its end marker must still leave
        ("POST", 200, [b"", b"data: 1\n\n"]),  # an empty first part, then the end
        ("HEAD", 200, [b""]),  # no body for HEAD: uvicorn's path
        ("POST", 204, [b""]),  # no body at all: uvicorn's path
        ("POST", 304, [b""]),
    ],
    ids=["empty", "empty-first", "head", "204", "304"],
)
def test_unusual_streams_are_byte_for_byte_uvicorns(
    keep_alive: bool, method: str, status: int, bodies: list[bytes]
) -> None:
    date = [(b"date", b"Tue, 01 Dec 2026 23:59:00 GMT")]

    async def scenario(target: CoalescingCycle) -> None:
        await target.send(
            {"type": "http.response.start", "status": status, "headers": [(b"x-a", b"1")]}
        )
        for i, body in enumerate(bodies):
            more = i < len(bodies) - 1
            await target.send({"type": "http.response.body", "body": body, "more_body": more})
        await asyncio.sleep(0)

    ours, theirs = Transport(), Transport()
    c, ours_done = cycle(ours, keep_alive=keep_alive, method=method, defaults=date)
    u, theirs_done = cycle(theirs, keep_alive=keep_alive, method=method, defaults=date)
    u.__class__ = RequestResponseCycle  # type: ignore[assignment]  # uvicorn's own
    asyncio.run(scenario(c))
    asyncio.run(scenario(u))
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert ours_done == theirs_done == [1] and c.response_complete
    assert ours.closed is theirs.closed


def test_a_connection_that_closes_is_closed_after_the_write() -> None:
    transport = Transport()
    c, completed = cycle(transport, keep_alive=False)

    async def scenario() -> None:
        await c.send(start([(b"content-length", b"3")]))
        await c.send({"type": "http.response.body", "body": b"abc"})

    asyncio.run(scenario())
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\nabc")
    assert b"connection: close" in transport.writes[0]
    assert transport.closed and completed == [1]


def test_a_body_in_parts_sends_the_head_with_the_first() -> None:
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-length", b"4")]))
        await c.send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"cd"})

    asyncio.run(scenario())
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\nab") and transport.writes[1] == b"cd"


RESPONSES = [
    (b"{}", [(b"content-type", b"application/json"), (b"Content-Length", b"2")]),
    (
        b"abc",
        [
            (b"content-type", b"application/json"),
            (b"x-reckon-request-id", b"5f0c"),
            (b"content-length", b"3"),
            (b"x-ratelimit-limit-requests", b"60"),
            (b"x-ratelimit-remaining-requests", b"59"),
            (b"x-ratelimit-reset-requests", b"7s"),
        ],
    ),
    (b"", [(b"content-length", b"0")]),
]


async def _respond(target: CoalescingCycle, body: bytes, headers: list) -> None:  # type: ignore[type-arg]
    await target.send(start(headers))
    await target.send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize(("body", "headers"), RESPONSES)
def test_the_one_pass_head_is_byte_for_byte_uvicorns(
    keep_alive: bool, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    ours, theirs = Transport(), Transport()
    date = [(b"date", b"Tue, 01 Dec 2026 23:59:00 GMT")]
    c, ours_done = cycle(ours, keep_alive=keep_alive, defaults=date)
    u, theirs_done = cycle(theirs, keep_alive=keep_alive, defaults=date)
    u.__class__ = RequestResponseCycle  # type: ignore[assignment]  # uvicorn's own
    asyncio.run(_respond(c, body, headers))
    asyncio.run(_respond(u, body, headers))
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert len(ours.writes) == 1 and len(theirs.writes) == 2
    assert ours_done == theirs_done == [1] and c.response_complete
    assert ours.closed is theirs.closed is (not keep_alive)


def test_a_header_value_with_a_line_break_is_refused() -> None:
    c, _ = cycle(Transport())
    with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
        asyncio.run(c.send(start([(b"x-a", b"1\r\nx-b: 2"), (b"content-length", b"0")])))


def test_a_head_request_and_a_short_body_take_uvicorns_path() -> None:
    transport = Transport()
    c, completed = cycle(transport, method="HEAD")

    async def scenario() -> None:
        await c.send(start([(b"content-length", b"5")]))
        await c.send({"type": "http.response.body", "body": b""})

    asyncio.run(scenario())
    assert b"".join(transport.writes).endswith(b"content-length: 5\r\n\r\n")
    assert completed == [1]


def test_the_relay_extension_writes_chunks_and_reports_a_client_that_left() -> None:
    async def scenario() -> None:
        transport = Transport()
        target, _ = cycle(transport)
        gone: list[int] = []
        target.start_relay(lambda: gone.append(1))
        assert not target.ready()  # no response started yet
        await target.send(start([(b"content-type", b"text/event-stream")]))
        assert target.ready()
        target.write_chunk(b"data: x\n\n")  # the first: it takes the head along
        target.write_chunk(b"data: x\n\n")
        assert transport.writes[-1] == b"9\r\ndata: x\n\n\r\n"  # uvicorn's chunk framing
        target.flow.pause_writing()
        assert not target.ready()  # above the high-water mark: the app's send waits
        target.flow.resume_writing()
        target.disconnected = True
        target.client_lost()
        target.client_lost()
        assert gone == [1] and not target.ready()  # once

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [1, 9, 255, 4095, 4096, 4097, 70_000])
def test_a_relayed_chunk_is_framed_as_uvicorns_send_frames_it(size: int) -> None:
    """write_chunk takes a chunk's size line from a table below 4 KiB and formats it above:
    either way, the bytes uvicorn's own send writes for the same body."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def scenario() -> tuple[bytes, bytes]:
        ours, theirs = Transport(), Transport()
        c, _ = cycle(ours)
        u, _ = cycle(theirs)
        u.__class__ = RequestResponseCycle  # type: ignore[assignment]  # uvicorn's own
        for target in (c, u):
            await target.send(start([(b"content-type", b"text/event-stream")]))
        c.write_chunk(body)
        await u.send({"type": "http.response.body", "body": body, "more_body": True})
        return b"".join(ours.writes), b"".join(theirs.writes)  # the first takes the head

    ours, theirs = asyncio.run(scenario())
    assert ours == theirs


def test_a_relay_started_after_the_client_left_hears_of_it_at_once() -> None:
    transport = Transport()
    target, _ = cycle(transport)
    target.disconnected = True
    gone: list[int] = []
    target.start_relay(lambda: gone.append(1))
    assert gone == [1]


class SocketTransport(Transport):
    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


async def _echo(scope: dict, receive: Any, send: Any) -> None:  # type: ignore[type-arg]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = scope["path"].encode() + b":" + body
    headers = [(b"content-length", str(len(reply)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


def _echo_connection() -> tuple[ReckonHttpProtocol, SocketTransport]:
    """Our protocol serving `_echo` on a fake socket, connected."""
    config = Config(app=_echo, lifespan="off", log_level="warning")
    config.load()
    protocol = ReckonHttpProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = SocketTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def test_the_lean_connection_keeps_pipelining_and_a_body_in_parts() -> None:
    asyncio.run(_lean_connection())


async def _lean_connection() -> None:
    # The connection's queue of pipelined requests and the waiter queues of its Events are
    # lists, not deques (760 bytes each, empty, per open stream): pipelined requests still
    # answer in order, and a request task waiting for the rest of its body is woken.
    protocol, transport = _echo_connection()
    assert not isinstance(protocol.pipeline, deque)
    assert not isinstance(protocol.flow._is_writable_event._waiters, deque)  # type: ignore[attr-defined]

    protocol.data_received(
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nyo"
    )
    for _ in range(100):
        if len(transport.writes) == 2:
            break
        await asyncio.sleep(0)
    assert [w.rsplit(b"\r\n\r\n", 1)[1] for w in transport.writes] == [b"/a:hi", b"/b:yo"]

    transport.writes.clear()
    protocol.data_received(b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc")
    assert not isinstance(protocol.cycle.message_event._waiters, deque)  # type: ignore[attr-defined]
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.writes == []  # the task waits on the cycle's event for the rest
    protocol.data_received(b"def")
    for _ in range(100):
        if transport.writes:
            break
        await asyncio.sleep(0)
    assert transport.writes[0].endswith(b"\r\n\r\n/c:abcdef")


def test_a_finished_request_leaves_nothing_for_the_cyclic_collector() -> None:
    asyncio.run(_no_garbage())


async def _no_garbage() -> None:
    # The scope offers the cycle itself as the relay extension (cycle -> scope -> cycle).
    # Left in place after the request, every request's cycle, scope and headers became
    # garbage only the cyclic collector frees: 18,000-19,000 objects per young collection
    # and a 3.5-7.5 ms pause each (the c=1 p99 tail). Refcounting must free them instead.
    protocol, transport = _echo_connection()
    gc.collect()
    gc.disable()
    try:
        finished = []
        for path in (b"/a", b"/b", b"/c"):
            protocol.data_received(
                b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi" % path
            )
            cycle = protocol.cycle
            assert isinstance(cycle, CoalescingCycle)
            assert cycle.scope["extensions"][RELAY_EXTENSION] is cycle  # offered while it runs
            finished.append(weakref.ref(cycle))
            del cycle
            for _ in range(100):
                if len(transport.writes) == len(finished) and not protocol.tasks:
                    break
                await asyncio.sleep(0)
        assert [w.rsplit(b"\r\n\r\n", 1)[1] for w in transport.writes] == [
            b"/a:hi",
            b"/b:hi",
            b"/c:hi",
        ]
        # the connection still holds its last cycle; the ones before it are gone
        assert [ref() is None for ref in finished] == [True, True, False]
    finally:
        gc.enable()


@pytest.mark.parametrize("byte", range(256))
def test_the_one_pass_head_refuses_what_uvicorn_refuses(byte: int) -> None:
    """Every byte, in a name and in a value: refused (or sent) exactly as uvicorn's own
    send refuses (or sends) it."""
    char = bytes((byte,))
    for headers in (
        [(b"x-a" + char, b"1"), (b"content-length", b"0")],
        [(b"x-a", b"1" + char), (b"content-length", b"0")],
    ):
        outcomes = []
        for kind in (CoalescingCycle, RequestResponseCycle):
            transport = Transport()
            c, _ = cycle(transport)
            c.__class__ = kind  # type: ignore[assignment]
            try:
                asyncio.run(_respond(c, b"", headers))
                outcomes.append(b"".join(transport.writes))
            except RuntimeError as exc:
                outcomes.append(str(exc).encode())
        assert outcomes[0] == outcomes[1]


async def _answered(transport: SocketTransport, count: int) -> None:
    for _ in range(1000):
        if len(transport.writes) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(transport.writes)} responses, not {count}")


def test_a_kept_alive_connection_keeps_one_keep_alive_timer_across_its_requests() -> None:
    """uvicorn arms a new keep-alive timer after every response (and cancels it at the
    next request): here the connection's one timer stands across requests."""

    async def scenario() -> None:
        protocol, transport = _echo_connection()
        protocol.data_received(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        await _answered(transport, 1)
        timer = protocol.timeout_keep_alive_task
        assert timer is not None
        for n in range(2, 5):
            protocol.data_received(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nyo")
            await _answered(transport, n)
            assert protocol.timeout_keep_alive_task is timer
        assert not transport.closed
        protocol.connection_lost(None)
        assert protocol.timeout_keep_alive_task is None  # cancelled, not left to fire

    asyncio.run(scenario())


def test_the_keep_alive_timeout_closes_an_idle_connection_and_never_a_busy_one() -> None:
    """The deadline is uvicorn's: idle since the last response, plus the timeout. Requests
    closer together than the timeout keep the connection open past it; a request whose
    body is still coming is never cut; once idle for the timeout, it is closed."""

    async def scenario() -> None:
        protocol, transport = _echo_connection()
        protocol.timeout_keep_alive = 0.5
        request = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        for n in range(1, 11):  # 1 s of requests 0.1 s apart
            protocol.data_received(request)
            await _answered(transport, n)
            await asyncio.sleep(0.1)
        assert not transport.closed
        protocol.data_received(b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc")
        await asyncio.sleep(1.2)  # the rest of the body is slow: not idle
        assert not transport.closed
        protocol.data_received(b"def")
        await _answered(transport, 11)
        for _ in range(100):  # idle from now
            if transport.closed:
                break
            await asyncio.sleep(0.05)
        assert transport.closed

    asyncio.run(scenario())


def test_the_keep_alive_timer_waits_out_a_shorter_idle_spell_and_then_closes() -> None:
    """The timer armed by the first response fires while the connection has been idle for
    less than the timeout since the second: it waits for the rest, then closes."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        protocol, transport = _echo_connection()
        protocol.timeout_keep_alive = 1.0
        request = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        protocol.data_received(request)
        await _answered(transport, 1)  # the timer: due 1 s from here
        await asyncio.sleep(0.4)
        protocol.data_received(request)
        await _answered(transport, 2)
        idle_from = loop.time()
        await asyncio.sleep(0.8)  # past the first deadline: idle only 0.8 s
        assert not transport.closed
        for _ in range(100):
            if transport.closed:
                break
            await asyncio.sleep(0.05)
        assert transport.closed and loop.time() - idle_from >= 1.0

    asyncio.run(scenario())


class _Accepted(asyncio.Protocol):
    """Hands the server side of an accepted connection to the test."""

    def __init__(self, accepted: "asyncio.Future[asyncio.Transport]") -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.accepted.set_result(transport)  # type: ignore[arg-type]


class _CountingSockets:
    """A real transport that counts the socket objects asked of it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.sockets_asked = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":
            self.sockets_asked += 1
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _addresses(protocol_class: type, transport: Any) -> tuple[Any, Any, Any]:
    config = Config(app=_echo, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(transport)
    return protocol.server, protocol.client, protocol.scheme


async def _accepted(family: str, where: Any) -> tuple[asyncio.Transport, Any, Any]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()
    if family == "unix":
        server = await loop.create_unix_server(lambda: _Accepted(accepted), where)
        client, _ = await loop.create_unix_connection(asyncio.Protocol, where)
    else:
        server = await loop.create_server(lambda: _Accepted(accepted), where, 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await loop.create_connection(asyncio.Protocol, where, port)
    return await accepted, client, server


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_connections_addresses_are_uvicorns_without_a_socket_object(
    family: str, loop_kind: str, tmp_path: Any
) -> None:
    """The scope's server and client addresses equal uvicorn's own, for TCP over IPv4 and
    IPv6 and for a unix socket, on uvloop and on asyncio's loop; ours come from the
    addresses the transport holds, not from a socket object made for each question (one
    getsockname and getpeername call each)."""
    import socket

    import uvloop

    if family == "ipv6" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    where = {"ipv4": "127.0.0.1", "ipv6": "::1", "unix": str(tmp_path / "s.sock")}[family]

    async def scenario() -> None:
        try:
            accepted, client, server = await _accepted(family, where)
        except OSError as exc:  # e.g. ::1 not configured in a container
            pytest.skip(f"cannot listen on {where}: {exc}")
        try:
            counting = _CountingSockets(accepted)
            ours = _addresses(ReckonHttpProtocol, counting)
            assert counting.sockets_asked == 0
            theirs = _addresses(HttpToolsProtocol, accepted)
            assert ours == theirs
            if family == "unix":
                assert ours[0] == (where, None) and ours[1] is None
            else:
                assert ours[0] == (where, server.sockets[0].getsockname()[1])
                assert ours[1] == (where, client.get_extra_info("sockname")[1])
        finally:
            client.close()
            accepted.close()
            server.close()
            await server.wait_closed()

    if loop_kind == "uvloop":
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


def test_a_transport_without_addresses_takes_uvicorns_way() -> None:
    """A transport that holds no "sockname" or "peername" gets uvicorn's answer (it asks
    the socket)."""

    class Socket:
        def getsockname(self) -> tuple[str, int]:
            return ("10.0.0.1", 443)

        def getpeername(self) -> tuple[str, int]:
            return ("10.0.0.2", 5555)

    class SocketOnly(Transport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return Socket() if name == "socket" else default

    async def scenario() -> None:
        assert _addresses(ReckonHttpProtocol, SocketOnly()) == (
            ("10.0.0.1", 443),
            ("10.0.0.2", 5555),
            "http",
        )

    asyncio.run(scenario())
