"""What an open stream holds while it relays (bench/stream_bench.py: memory per open
stream). Every frame and object here lives as long as the stream does, thousands at once:
the call's coroutine chain is `run` then `relay_stream` (then the upstream read), and
neither the chain nor the callbacks the relay registers keep closures or cells; the
request's body and the upstream's headers, read and sent, are not kept."""

import asyncio
from types import CodeType
from typing import Any

from metering.proxy.adapters import CHAT
from metering.proxy.upstream import UpstreamResponse
from tests.api.proxy.test_relay_records import FakeApp, never_disconnects
from tests.api.proxy.test_stream_relay_fast import CHAT_STREAM, Client, Conn, make_call


async def _while_open() -> tuple[list[CodeType], list[Any], bytes]:
    """Open a stream through `Call.run`, relay its first event on the fast path, and
    look: the codes of the call's coroutine chain, the relay's callbacks, what the
    client got in the end."""
    app = FakeApp()
    call = make_call(app, CHAT, "openai", False)
    call.prepared.body = b'{"model": "m", "messages": [], "stream": true}'
    out: list[bytes] = []
    client = Client(out)
    call.client = client  # type: ignore[assignment]
    response = UpstreamResponse(Conn(), asyncio.get_running_loop(), 60.0, None)  # type: ignore[arg-type]
    response.status = 200
    response.headers = {"content-type": "text/event-stream"}

    class Upstream:
        async def post(self, *_: Any, **__: Any) -> UpstreamResponse:
            return response

    app.upstream = Upstream()  # type: ignore[assignment]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            out.append(message["body"])

    task = asyncio.ensure_future(call.run(never_disconnects, send, {}))  # type: ignore[arg-type]
    first, rest = CHAT_STREAM.split(b"\n\n", 1)
    for data in (first + b"\n\n", rest[:200]):
        response._feed(data)
        for _ in range(5):
            await asyncio.sleep(0)
    codes = []
    awaited: Any = task.get_coro()
    while hasattr(awaited, "cr_code"):
        codes.append(awaited.cr_code)
        awaited = awaited.cr_await
    callbacks = [response.relay, client.on_disconnect]
    assert call.prepared.body == b"" and response.headers == {}
    response._feed(rest[200:])
    response._complete()
    await task
    assert len(app.rows) == 1 and len(app.released) == 1
    return codes, callbacks, b"".join(out)


def test_an_open_stream_holds_two_frames_of_the_call_and_no_closures() -> None:
    codes, callbacks, body = asyncio.run(_while_open())
    # the call's two frames, then the upstream read it waits in (a coroutine, no generator)
    assert [code.co_name for code in codes] == ["run", "relay_stream", "next_chunk", "_wait"]
    assert all(not code.co_cellvars and not code.co_freevars for code in codes)
    assert all(callback is not None for callback in callbacks)
    assert all(getattr(callback, "__closure__", None) is None for callback in callbacks)
    assert body.endswith(b"data: [DONE]\n\n")


async def _tasks_while_a_stream_relays() -> list[str]:
    """The tasks made from a stream's start to a few loop turns after its end."""
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", type(coro).__name__))
        return asyncio.Task(coro, loop=loop, **kwargs)

    asyncio.get_running_loop().set_task_factory(factory)
    await _while_open()
    for _ in range(5):
        await asyncio.sleep(0)
    return list(made)  # asyncio.run makes tasks of its own at the end


def test_a_stream_ended_by_its_terminal_event_leaves_no_task_behind() -> None:
    # The relay stops reading at the terminal event; an async generator left there was
    # closed by the loop's finalizer hook: a wake-up and an `aclose` task per stream.
    assert asyncio.run(_tasks_while_a_stream_relays()) == ["Call.run"]
