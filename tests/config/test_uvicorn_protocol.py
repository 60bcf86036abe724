"""The coalescing response cycle: a whole response leaves in one write, streams as before."""

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl

from config.uvicorn_protocol import CoalescingCycle


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

    def resume_reading(self) -> None: ...


def cycle(transport: Transport, *, keep_alive: bool = True) -> tuple[CoalescingCycle, list[int]]:
    completed: list[int] = []
    scope = {"type": "http", "method": "POST", "http_version": "1.1", "headers": []}
    return (
        CoalescingCycle(
            scope=scope,  # type: ignore[arg-type]
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=logging.getLogger("test"),
            access_logger=logging.getLogger("test"),
            access_log=False,
            default_headers=[],
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


def test_a_stream_head_leaves_at_once_and_chunks_follow() -> None:
    transport = Transport()
    c, _ = cycle(transport)

    async def scenario() -> None:
        await c.send(start([(b"content-type", b"text/event-stream")]))
        assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")
        await c.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"", "more_body": False})

    asyncio.run(scenario())
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


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
