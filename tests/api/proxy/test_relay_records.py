"""A stream relay always leaves its record and settles its hold (decision 0117, review B1):
on both paths (a single target, and a routed call whose response start is deferred),
whatever ends the relay: a cut, a cancelled task, or an exception it did not expect."""

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from api.proxy.call import Call, retry_after_seconds
from metering.models import UsageRecord
from metering.proxy.adapters import CHAT, PreparedCall
from metering.proxy.callers import AliasPlan, CallerContext, RouteInfo
from metering.routing.policies import Pick

Status = UsageRecord.Status
CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},'
    b'"finish_reason":null}]}\n\n'
)


class FakeResponse:
    """A 200 event stream that yields `chunks`, then ends as `then` says."""

    status = 200
    content_type = "text/event-stream"

    def __init__(self, chunks: list[bytes], then: str) -> None:
        self.headers = {"content-type": "text/event-stream"}
        self.chunks = list(chunks)
        self.then = then
        self.reached_end = asyncio.Event()

    async def next_chunk(self) -> bytes | None:
        if self.chunks:
            return self.chunks.pop(0)
        self.reached_end.set()
        if self.then == "raise":
            raise RuntimeError("a bug past the first event")
        await asyncio.Event().wait()  # "hang": until cancelled

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeHold:
    headers: list[tuple[bytes, bytes]] = []


class FakeApp:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.released: list[FakeHold] = []
        self.reports: list[bool] = []
        self.ledger = self
        self.holds = self
        self.routing = self
        self.upstream = None

    async def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def release(self, hold: FakeHold | int, **_: Any) -> None:
        if isinstance(hold, FakeHold):  # not a routing slot (a route id)
            self.released.append(hold)

    def report(self, plan: AliasPlan, route_id: int, *, ok: bool, **_: Any) -> None:
        self.reports.append(ok)


def route(name: str, route_id: int) -> RouteInfo:
    return RouteInfo(
        alias="thinker",
        provider="openai",
        upstream_model="m",
        accelerator="",
        base_url="http://127.0.0.1:9",
        credential="",
        credential_missing=False,
        route_id=route_id,
        target=name,
        first_byte_timeout_s=5.0,
    )


def make_call(app: FakeApp, routed: bool) -> Call:
    targets = (route("a", 1), route("b", 2))
    plan = AliasPlan("thinker", 7, "fallback", (), 2, targets) if routed else None
    caller = CallerContext(uuid.uuid4(), 1, None, {"thinker": targets[0]})
    call = Call(
        app,  # type: ignore[arg-type]
        caller,
        targets[0],
        CHAT,
        PreparedCall(b"{}", True, False),
        datetime.now(UTC),
        0,
        FakeHold(),  # type: ignore[arg-type]
        "",
        plan,
    )
    call.last = False  # a routed call's first attempt: another target is left
    return call


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def relay(routed: bool, chunks: list[bytes], then: str) -> tuple[FakeApp, list[str]]:
    app = FakeApp()
    call = make_call(app, routed)
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    response = FakeResponse(chunks, then)
    task = asyncio.ensure_future(
        call.relay_stream(response, never_disconnects, send, defer_start=routed)  # type: ignore[arg-type]
    )
    await response.reached_end.wait()
    if then == "hang":
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(RuntimeError):
            await task
    return app, sent


@pytest.mark.parametrize("routed", [False, True], ids=["single", "routed"])
@pytest.mark.parametrize("then", ["hang", "raise"], ids=["cancelled", "raising"])
def test_an_answered_stream_that_ends_abnormally_is_recorded_incomplete(
    routed: bool, then: str
) -> None:
    app, sent = asyncio.run(relay(routed, [CHUNK], then))
    assert sent == ["http.response.start", "http.response.body"]  # the client got tokens
    assert [(r["status"], r["attempt"]) for r in app.rows] == [(Status.INCOMPLETE, 1)]
    assert app.rows[0]["failed_over"] is (False if routed else None)
    assert len(app.released) == 1  # the hold is settled, once


@pytest.mark.parametrize("then", ["hang", "raise"], ids=["cancelled", "raising"])
def test_a_routed_stream_that_ends_abnormally_before_answering_is_recorded_failed(
    then: str,
) -> None:
    app, sent = asyncio.run(relay(True, [], then))
    assert sent == []
    assert [(r["status"], r["failed_over"], r["flags"]) for r in app.rows] == [
        (Status.FAILED, False, ["stream_interrupted"])
    ]
    assert len(app.released) == 1


def test_retry_after_takes_ascii_digits_only() -> None:
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds("\xb2") is None  # latin-1 '²': isdigit() but not int()
    assert retry_after_seconds("") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("1.5") is None


COMPLETION = (
    b'{"id":"chatcmpl-2","object":"chat.completion","created":0,"model":"m","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
)


class WholeResponse:
    content_type = "application/json"

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = {"content-type": "application/json", **headers}

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass


class Upstream:
    """Answers each target (by base URL) with its response; notes each head timeout."""

    def __init__(self, answers: dict[str, WholeResponse]) -> None:
        self.answers = answers
        self.head_timeouts: list[float | None] = []

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], head_timeout: float | None = None
    ) -> WholeResponse:
        self.head_timeouts.append(head_timeout)
        return next(r for base, r in self.answers.items() if url.startswith(base))


class RoutedApp(FakeApp):
    def __init__(self, upstream: Upstream, *, failing_writes: bool = False) -> None:
        super().__init__()
        self.upstream = upstream  # type: ignore[assignment]
        self.failing_writes = failing_writes
        self.report_args: list[tuple[int, bool, int | None]] = []

    async def write(self, row: dict[str, Any]) -> None:
        if self.failing_writes and row["failed_over"]:
            raise RuntimeError("the ledger refused the failed-over attempt")
        self.rows.append(row)

    def report(
        self, plan: AliasPlan, route_id: int, *, ok: bool, retry_after_s: int | None = None
    ) -> None:
        self.report_args.append((route_id, ok, retry_after_s))

    def acquire(self, route_id: int) -> None:
        pass


def run_routed(app: RoutedApp, stream: bool = False) -> list[str]:
    a, b = replace_url(route("a", 1), "http://a"), replace_url(route("b", 2), "http://b")
    plan = AliasPlan("thinker", 7, "fallback", (), 2, (a, b))
    caller = CallerContext(uuid.uuid4(), 1, None, {"thinker": a})
    call = Call(
        app,  # type: ignore[arg-type]
        caller,
        a,
        CHAT,
        PreparedCall(b"{}", stream, False),
        datetime.now(UTC),
        0,
        FakeHold(),  # type: ignore[arg-type]
        "",
        plan,
    )
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    picks = [Pick(0, "priority"), Pick(1, "failover")]
    asyncio.run(call.run_routed(never_disconnects, send, picks, {}, lambda _: {}))
    return sent


def replace_url(info: RouteInfo, url: str) -> RouteInfo:
    return dataclasses.replace(info, base_url=url)


@pytest.mark.parametrize(("header", "seconds"), [("7", 7), ("\xb2", None)])
def test_a_429_fails_over_and_hands_its_retry_after_to_the_breaker(
    header: str, seconds: int | None
) -> None:
    upstream = Upstream(
        {
            "http://a": WholeResponse(429, b"{}", {"retry-after": header}),
            "http://b": WholeResponse(200, COMPLETION, {}),
        }
    )
    app = RoutedApp(upstream)
    sent = run_routed(app)
    assert sent == ["http.response.start", "http.response.body"]
    rows = sorted(app.rows, key=lambda r: r["attempt"])
    assert [(r["route_id"], r["status"], r["failed_over"], r["attempt"]) for r in rows] == [
        (1, Status.UPSTREAM_ERROR, True, 1),
        (2, Status.COMPLETED, False, 2),
    ]
    assert app.report_args == [(1, False, seconds), (2, True, None)]
    assert upstream.head_timeouts == [None, None]  # whole answers: no first-byte timeout
    assert len(app.released) == 1


def test_a_failed_over_write_that_fails_still_settles_the_hold() -> None:
    upstream = Upstream(
        {
            "http://a": WholeResponse(503, b"{}", {}),
            "http://b": WholeResponse(200, COMPLETION, {}),
        }
    )
    app = RoutedApp(upstream, failing_writes=True)
    assert run_routed(app) == ["http.response.start", "http.response.body"]
    assert [(r["route_id"], r["status"]) for r in app.rows] == [(2, Status.COMPLETED)]
    assert len(app.released) == 1


def test_a_streamed_call_bounds_its_headers_by_the_first_byte_timeout() -> None:
    upstream = Upstream({"http://a": WholeResponse(400, b"{}", {})})
    app = RoutedApp(upstream)
    run_routed(app, stream=True)
    assert upstream.head_timeouts == [5.0]


class BrokenUpstream:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def post(self, *_: Any, **__: Any) -> WholeResponse:
        raise self.error


@pytest.mark.parametrize("routed", [False, True], ids=["single", "routed"])
@pytest.mark.parametrize(
    "error", [RuntimeError("a bug"), asyncio.CancelledError()], ids=["raising", "cancelled"]
)
def test_a_call_that_ends_by_an_exception_before_any_answer_is_recorded_failed(
    routed: bool, error: BaseException
) -> None:
    app = RoutedApp(Upstream({}))
    app.upstream = BrokenUpstream(error)  # type: ignore[assignment]
    call = make_call(app, routed)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    async def run() -> None:
        if routed:
            picks = [Pick(0, "priority"), Pick(1, "failover")]
            await call.run_routed(never_disconnects, send, picks, {}, lambda _: {})
        else:
            await call.run(never_disconnects, send, {})

    with pytest.raises(type(error)):
        asyncio.run(run())
    assert [(r["status"], r["flags"], r["attempt"]) for r in app.rows] == [
        (Status.FAILED, ["proxy_interrupted"], 1)
    ]
    assert len(app.released) == 1
