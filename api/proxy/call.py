"""One proxied call, from the upstream request to the committed record: relaying a whole
answer or a stream in the caller's wire format, noticing a client that goes away, and
hiding anything of the upstream's that could hold a secret or an internal address.

What the call writes is built by metering.ledger.record; its hold is settled by
metering.control.holds once the record is durable.

A call on an alias with several targets (decision 0117) runs `run_routed`: the attempts
its routing plan gives, in order. It fails over to the next one only while nothing has
reached the client (`answered` is false) and the client is still there: on an
unreachable upstream, a stream's headers or first event not in time (the first-byte
timeout is for streams only: a whole answer's headers come when it is complete), a 5xx
or 429, or a stream whose first event is an error or that ends before its first event.
Its stream's headers wait for the first event. Every attempt leaves a record (a
failed-over one with zero tokens, written as a task that is awaited before the final
answer leaves), whatever ends it; only the final attempt settles the hold.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import orjson
from django.conf import settings

from api.proxy import errors
from api.proxy.wire import (
    LOGGED_BODY_BYTES,
    REQUEST_ID_HEADER,
    Receive,
    RelayClient,
    Send,
    loads_or_none,
    send_error,
    send_response,
)
from metering.control.holds import Hold, Holds
from metering.ledger import LedgerWriter
from metering.ledger.record import request_id_attempt, request_id_for, usage_record_row
from metering.models import UsageRecord
from metering.proxy.adapters import (
    Endpoint,
    Outcome,
    PreparedCall,
    StreamTracker,
    stream_tracker_for,
)
from metering.proxy.callers import AliasPlan, CallerContext, RouteInfo
from metering.proxy.sse import SseEvent, SseSplitter, format_event
from metering.proxy.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamHeadTimeout,
    UpstreamResponse,
)
from metering.routing.policies import Pick, retryable_status
from metering.routing.state import RoutingState
from metering.usage import TokenUsage

logger = logging.getLogger(__name__)

Status = UsageRecord.Status
_ERROR_BODY_WAIT_S = 2.0  # longest wait for a failed-over error answer's body (the log's)
_PASSTHROUGH_RESPONSE_HEADERS = (
    "x-request-id",
    "request-id",
    "retry-after",
    "openai-processing-ms",
)


def _passes(tracker: StreamTracker, events: bytes) -> bool:
    """The relay's fast path may write `events` (complete ones) from the read callback
    (`find`, not `in`: metering.proxy.adapters)."""
    return events.find(b"error") < 0 and tracker.passes(events)


def retry_after_seconds(value: str | None) -> int | None:
    """An upstream's `Retry-After` in whole seconds; None unless it is ASCII digits (its
    headers are decoded as latin-1, where '\xb2' is a digit that int() refuses)."""
    if value and value.isascii() and value.isdigit():
        return int(value)
    return None


class Services(Protocol):
    """What a call uses of its server process (api.proxy.app.ProxyApp)."""

    upstream: UpstreamClient
    ledger: LedgerWriter
    holds: Holds
    routing: RoutingState


class Call:
    """One proxied request from upstream call to committed record."""

    __slots__ = (
        "app",
        "caller",
        "route",
        "endpoint",
        "prepared",
        "started_at",
        "started_ns",
        "request_id",
        "ttft_ns",
        "client_gone",
        "upstream_status",
        "drain_deadline",
        "hold",
        "effort",
        "attempt",
        "plan",
        "reason",
        "last",
        "answered",
        "pending",
        "first_byte_deadline",
        "recorded",
        "client",
        # a stream relay's state (set by relay_stream, read by its callbacks)
        "stream",
        "tracker",
        "splitter",
        "relaying",
        "stalled",
        "stall_timer",
        "send",
        "start_headers",
        "passes",
    )
    stream: UpstreamResponse
    tracker: StreamTracker
    splitter: SseSplitter
    relaying: bool  # the relay runs: a client leaving now starts the drain deadline
    stalled: bool  # a deferred stream's first event did not come in time
    stall_timer: asyncio.TimerHandle | None
    send: Send
    start_headers: list[tuple[bytes, bytes]] | None  # a deferred stream's, until it starts
    # the fast path's byte scan (_passes), built once a stream: a bound method would be
    # built on every read, and a reference to the call would make a cycle
    passes: Callable[[bytes], bool]

    def __init__(
        self,
        app: Services,
        caller: CallerContext,
        route: RouteInfo,
        endpoint: Endpoint,
        prepared: PreparedCall,
        started_at: datetime,
        started_ns: int,
        hold: Hold | None = None,
        effort: str = "",
        plan: AliasPlan | None = None,
    ) -> None:
        self.hold = hold
        self.effort = effort  # the request's reasoning effort after governance ("" none)
        self.attempt = 1
        self.plan = plan  # None: a single-target alias (no routing work)
        self.reason: str | None = None  # the routing pick's reason (route_reason)
        self.last = True  # no target left to fail over to
        self.answered = False  # http.response.start was sent (routed calls track it)
        self.pending: list[asyncio.Future[None]] = []  # failed-over attempts' writes
        self.first_byte_deadline: float | None = None  # loop time: an attempt's first byte
        self.recorded = False  # the final record was started (never write it twice)
        # the server's relay extension (api.proxy.server), None under another server
        self.client: RelayClient | None = None
        self.app = app
        self.caller = caller
        self.route = route
        self.endpoint = endpoint
        self.prepared = prepared
        self.started_at = started_at
        self.started_ns = started_ns
        # carries started_at (partitions); a routed call's attempts share its upper bits, and
        # every record's low 4 bits are its attempt (1 for a single-target call)
        self.request_id = request_id_for(started_at, 1)
        self.ttft_ns: int | None = None
        self.client_gone = False
        self.upstream_status = 0
        self.drain_deadline: asyncio.TimerHandle | None = None

    async def run(self, receive: Receive, send: Send, upstream_headers: dict[str, str]) -> None:
        """A single-target call (no routing work). If an exception (a cancel, a bug) ends
        it before its final record, the attempt is recorded as failed and the hold
        settled, then the exception goes on. One frame for all of it: a stream's frames
        stay as long as it is open (bench/stream_bench.py, memory per open stream)."""
        try:
            url = self.route.base_url + self.endpoint.upstream_path
            try:
                response = await self.app.upstream.post(url, self.prepared.body, upstream_headers)
            except UpstreamError as exc:
                await self._upstream_failed(
                    send,
                    exc,
                    "upstream_unreachable",
                    f"The upstream for '{self.route.alias}' could not be reached (request {self.request_id}).",
                    extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
                )
                return
            # Sent: neither the request's headers nor its body (a long conversation can
            # be most of a call's memory) stay while the answer streams.
            del upstream_headers
            self.prepared.body = b""
            self.upstream_status = response.status
            try:
                is_sse = response.content_type == "text/event-stream"
                if self.prepared.stream and response.status == 200 and is_sse:
                    await self.relay_stream(response, receive, send)
                else:
                    await self.relay_whole(response, send)
            finally:
                response.release()
        except BaseException:
            await self._interrupted()
            raise

    async def _upstream_failed(
        self,
        send: Send,
        exc: UpstreamError,
        flag: str,
        message: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """The upstream could not be reached or its answer was cut: record the call as
        failed with `flag`, then tell the client in its own format."""
        logger.warning("upstream failure for %s (%s): %s", self.request_id, self.route.alias, exc)
        await self.record(Outcome(TokenUsage(), None, "", Status.FAILED, [flag]))
        await send_error(
            send,
            errors.UPSTREAM_UNAVAILABLE,
            message,
            self.endpoint.anthropic_format,
            extra_headers=extra_headers,
        )

    async def _interrupted(self) -> None:
        """An exception ends the call: unless its final record was started, record the
        attempt as failed and settle the hold."""
        if not self.recorded:
            await self.record(Outcome(TokenUsage(), None, "", Status.FAILED, ["proxy_interrupted"]))

    def headers_for(self, response: UpstreamResponse) -> list[tuple[bytes, bytes]]:
        headers = [
            (
                b"content-type",
                (response.headers.get("content-type") or "application/json").encode(),
            ),
            (REQUEST_ID_HEADER, str(self.request_id).encode()),
        ]
        for name in _PASSTHROUGH_RESPONSE_HEADERS:
            value = response.headers.get(name)
            if value is not None:
                headers.append((name.encode(), value.encode("latin-1")))
        if self.hold is not None:
            headers += self.hold.headers
        return headers

    async def relay_whole(self, response: UpstreamResponse, send: Send) -> None:
        try:
            body = await response.read()
        except UpstreamError as exc:
            await self._upstream_failed(
                send,
                exc,
                "upstream_read_failed",
                f"The upstream response was cut (request {self.request_id}).",
            )
            return
        if response.status == 200:
            parsed = loads_or_none(body)
            if isinstance(parsed, dict):
                outcome = self.endpoint.outcome_from_body(parsed, count_text=self.count_text)
                await self.record(outcome)
                await send_response(send, response.status, self.headers_for(response), body)
                return
            # A 200 that is not the wire format: the caller's SDK could not parse it and it
            # may hold anything of the upstream's. Record it flagged (held back from rating,
            # for review: the upstream may have billed it) and answer a 502.
            logger.warning(
                "upstream answered 200 with no wire-format body for %s (%s): %r",
                self.request_id,
                self.route.alias,
                body[:LOGGED_BODY_BYTES],
            )
            await self.record(
                Outcome(TokenUsage(), None, "", Status.UPSTREAM_ERROR, ["unparseable_response"])
            )
            await send_error(
                send,
                errors.UPSTREAM_FAILED,
                f"The upstream provider answered something that is not an API response "
                f"(request {self.request_id}).",
                self.endpoint.anthropic_format,
                extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
            )
            return
        await self.relay_failure(response, body)
        await self.answer_failure(response, body, send)

    async def relay_failure(self, response: UpstreamResponse, body: bytes) -> None:
        """Record an upstream's error answer; its body goes to the server log only."""
        logger.warning(
            "upstream answered %d for %s (%s): %r",
            response.status,
            self.request_id,
            self.route.alias,
            body[:LOGGED_BODY_BYTES],
        )
        flag = "upstream_auth_failed" if response.status in (401, 403) else "upstream_error_hidden"
        await self.record(Outcome(TokenUsage(), None, "", Status.UPSTREAM_ERROR, [flag]))

    async def answer_failure(self, response: UpstreamResponse, body: bytes, send: Send) -> None:
        """Tell the caller about an upstream's error answer in its own format, with nothing
        of the upstream's that could hold a secret or an internal address."""
        failure = errors.upstream_failure(response.status, body, response.content_type)
        headers = [(REQUEST_ID_HEADER, str(self.request_id).encode())]
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if failure.kind.status == 429 and retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if self.hold is not None:
            headers += self.hold.headers
        message = failure.message
        if failure.kind.status >= 500:
            message = f"{message} (request {self.request_id})"
        await send_error(
            send,
            failure.kind,
            message,
            self.endpoint.anthropic_format,
            failure.param,
            extra_headers=headers,
        )

    async def relay_stream(
        self,
        response: UpstreamResponse,
        receive: Receive,
        send: Send,
        *,
        defer_start: bool = False,
    ) -> bool:
        """Relay a stream in the caller's format and record it. With `defer_start` (a routed
        call) the response start waits for the first event to forward, so that until then
        the attempt can still fail over (False: it did). Whatever ends the relay (a cut, a
        cancel, any exception), the attempt leaves its record and settles the hold:
        `incomplete` once the client was answered, else `failed`."""
        headers = self.headers_for(response)
        headers.append((b"cache-control", b"no-cache"))
        response.headers = {}  # read: not held while the stream is open
        loop = asyncio.get_running_loop()
        self.start_headers = None
        if defer_start:
            self.start_headers = headers
        else:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.answered = True
        del headers
        self.send = send
        self.stream = response
        client = self.client
        self.relaying = True
        watcher: asyncio.Task[None] | None = None
        if client is None:
            watcher = loop.create_task(self.watch_client(receive, response))
        else:
            client.start_relay(self._client_left_relay)
        tracker = self.tracker = stream_tracker_for(
            self.endpoint, provider=self.route.provider, hide_usage=self.prepared.hide_usage
        )
        splitter = self.splitter = SseSplitter()
        self.passes = partial(_passes, tracker)
        self.stalled = False
        self.stall_timer = None
        if defer_start and self.first_byte_deadline is not None:
            # the attempt's one deadline, shared with the wait for its headers
            self.stall_timer = loop.call_at(self.first_byte_deadline, self._first_event_late)

        recorded = False
        first_error = False
        last = b""  # the terminal event, sent with the end of the body
        try:
            try:
                while True:
                    chunk = await response.next_chunk()
                    if chunk is None:
                        break
                    out: list[bytes] = []
                    for event in splitter.feed(chunk):
                        sent = tracker.feed(event)
                        if sent is not None and event.data.find(b"error") >= 0:
                            hidden = self.hide_error_event(event)
                            if hidden is not None:
                                if not out and self._may_fail_over():
                                    first_error = True  # the first event is an error: next target
                                    break
                                sent = hidden
                                tracker.errored = True
                        if self.ttft_ns is None and tracker.first_output_seen:
                            self.ttft_ns = time.perf_counter_ns()
                        if tracker.terminal:
                            if out:
                                await self._forward(b"".join(out))
                            elif not self.answered:
                                await self._start()
                            out = []
                            recorded = True
                            await self.record(tracker.outcome(completed=True))
                            # it leaves with the end of the body, in one write
                            last = sent or b""
                            break
                        if sent is not None:
                            out.append(sent)
                    if recorded or first_error:
                        break
                    if out:
                        await self._forward(b"".join(out))
                    if client is not None and self.answered and response.relay is None:
                        response.relay = self._relay_plain  # from now on plain reads skip this loop
                    # this read's bytes and events would stay in the frame as long as the
                    # stream is open (about 0.9 KiB a stream, once the fast path relays)
                    chunk = b""
                    out = []
                    event = sent = None  # type: ignore[assignment]
            except (UpstreamError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not self.client_gone:
                    raise
                logger.info("upstream stream for %s ended early: %r", self.request_id, exc)
            finally:
                self.relaying = False
                if client is not None:
                    response.relay = None
                if watcher is not None:
                    watcher.cancel()
                if self.stall_timer is not None:
                    self.stall_timer.cancel()
                    self.stall_timer = None
                if self.drain_deadline is not None:
                    self.drain_deadline.cancel()
                    self.drain_deadline = None
            if not self.answered and not recorded:
                # Nothing reached the client: a failed attempt, never `incomplete`.
                flag = (
                    "upstream_error_event"
                    if first_error
                    else (
                        "first_event_timeout" if self.stalled else "stream_ended_before_first_event"
                    )
                )
                status = Status.UPSTREAM_ERROR if first_error else Status.FAILED
                outcome = Outcome(TokenUsage(), None, "", status, [flag])
                recorded = True
                if self.client_gone:
                    # The client left first: this is the final attempt (another target
                    # would do, and bill, the call for nobody), and no breaker failure
                    # (the close may be the drain deadline's, not the target's fault).
                    await self.record(outcome)
                    return True
                self.report(ok=False)
                if self._may_fail_over():
                    self.fail_over(outcome)
                    return False
                await self.record(outcome)
                await send_error(
                    send,
                    errors.UPSTREAM_UNAVAILABLE,
                    f"The upstream for '{self.route.alias}' sent no answer (request {self.request_id}).",
                    self.endpoint.anthropic_format,
                    extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
                )
                return True
            if not recorded:
                recorded = True
                await self.record(tracker.outcome(completed=False))
            self.report(ok=True)  # it answered: what breaks after that is not failed over
            if not self.client_gone:
                await send({"type": "http.response.body", "body": last, "more_body": False})
            return True
        finally:
            if not recorded:  # cancelled or raised: the attempt still leaves its record
                await self.record(
                    tracker.outcome(completed=False)
                    if self.answered
                    else Outcome(TokenUsage(), None, "", Status.FAILED, ["stream_interrupted"])
                )

    # --- a stream relay's callbacks: methods, not closures (a closure and its cells
    # are allocated per stream and held while it is open: 1.4 KiB a stream, tracemalloc)

    def _client_left_relay(self) -> None:
        if self.relaying:
            self.client_left(self.stream)

    def _relay_plain(self, data: bytes) -> bool:
        """The fast path, in the upstream's read callback while the relay waits with
        nothing pending: events that matter to nobody but the client (a byte scan) leave
        at once, in one write; anything else wakes the relay (False). Set only with a
        client."""
        client = self.client
        if not client.ready():  # type: ignore[union-attr]
            return False
        plain = self.splitter.take_plain(data, self.passes)
        if plain is None:
            return False
        if plain:
            client.write_chunk(plain)  # type: ignore[union-attr]
        return True

    def _first_event_late(self) -> None:
        self.stalled = True
        self.stream.close()

    async def _start(self) -> None:
        """A deferred stream's response start, at its first event to forward."""
        self.answered = True
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        headers, self.start_headers = self.start_headers, None
        if not self.client_gone:
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _forward(self, body: bytes) -> None:
        if not self.answered:
            await self._start()
        if self.client_gone:
            return
        client = self.client
        if client is not None and body and client.ready():  # the frame send makes, no message
            client.write_chunk(body)
        else:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    def _may_fail_over(self) -> bool:
        return not self.answered and not self.last and not self.client_gone

    def hide_error_event(self, event: SseEvent) -> bytes | None:
        """An upstream's error event mid-stream, re-expressed with a generic message (the
        upstream's own goes to the server log); None for any other event."""
        payload = loads_or_none(event.data)
        if not isinstance(payload, dict):
            return None
        name = event.event or str(payload.get("type", "")).encode()
        generic = f"The upstream provider failed mid-stream (request {self.request_id})."
        if self.endpoint.anthropic_format or name == b"error":
            if name != b"error" and payload.get("type") != "error":
                return None
            if self.endpoint.anthropic_format:
                error: dict[str, Any] = {"type": "error", "error": {"type": "api_error"}}
                error["error"]["message"] = generic
            else:  # the Responses API's error event
                error = {"type": "error", "code": "upstream_error", "message": generic}
                error["param"] = None
        elif name == b"response.failed":
            failed = payload.get("response")
            if not isinstance(failed, dict) or "error" not in failed:
                return None
            failed["error"] = {"code": "upstream_error", "message": generic}
            error = payload
        elif "error" in payload and "choices" not in payload:  # chat completions
            error = {"error": {"message": generic, "type": "api_error", "param": None}}
            error["error"]["code"] = "upstream_error"
        else:
            return None
        logger.warning(
            "upstream error event for %s (%s): %r",
            self.request_id,
            self.route.alias,
            event.data[:LOGGED_BODY_BYTES],
        )
        return format_event(orjson.dumps(error), event.event)

    async def watch_client(self, receive: Receive, response: UpstreamResponse) -> None:
        """Notice a client that goes away; keep draining upstream, within a time limit."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        self.client_left(response)

    def client_left(self, response: UpstreamResponse) -> None:
        """The client went away: keep draining upstream (its usage is billed), within a
        time limit; past it, closing the upstream ends the read loop as a cut stream."""
        self.client_gone = True
        self.drain_deadline = asyncio.get_running_loop().call_later(
            settings.RECKON_DRAIN_TIMEOUT_SECONDS, response.close
        )

    @property
    def count_text(self) -> bool:
        return self.route.provider == "openai-compatible"

    def _row(self, outcome: Outcome, *, failed_over: bool = False) -> tuple[dict[str, Any], Any]:
        """This attempt's ledger row and its spend: the one builder for the final record
        and for a failed-over attempt's (zero tokens, no TTFT)."""
        usage = TokenUsage() if failed_over else outcome.usage
        ttft_ns = None if failed_over else self.ttft_ns
        return usage_record_row(
            request_id=self.request_id,
            tenant_id=self.caller.tenant_id,
            api_key_id=self.caller.api_key_id,
            route=self.route,
            endpoint=self.endpoint.name,
            stream=self.prepared.stream,
            status=outcome.status,
            upstream_status=self.upstream_status,
            response_id="" if failed_over else outcome.response_id,
            usage=usage,
            flags=outcome.flags,
            raw_usage=None if failed_over else outcome.raw_usage,
            client_disconnected=self.client_gone,
            ttft_us=None if ttft_ns is None else (ttft_ns - self.started_ns) // 1000,
            latency_us=(time.perf_counter_ns() - self.started_ns) // 1000,
            started_at=self.started_at,
            route_id=self.route.route_id,
            attempt=self.attempt,
            failed_over=None if self.plan is None else failed_over,
            route_policy=None if self.plan is None else self.plan.policy,
            route_reason=self.reason,
            reasoning_effort=self.effort,
        )

    async def record(self, outcome: Outcome) -> None:
        """Write the call's usage record (waiting for the group commit), then settle its
        hold for what it actually used."""
        self.recorded = True
        usage = outcome.usage
        row, spend = self._row(outcome)
        await self.app.ledger.write(row)
        try:
            if self.pending:  # the failed-over attempts' records, before the answer leaves
                results = await asyncio.gather(*self.pending, return_exceptions=True)
                self.pending.clear()
                for result in results:
                    if isinstance(result, BaseException):
                        logger.error(
                            "a failed-over attempt of %s was not written: %r",
                            self.request_id,
                            result,
                        )
        finally:
            self.settle(spend, usage)

    def settle(self, spend: Any, usage: TokenUsage) -> None:
        """Release the hold for what the call actually used (its record is durable)."""
        if self.hold is not None:
            self.app.holds.release(
                self.hold,
                spend=spend,
                reasoning_tokens=usage.reasoning_tokens,
                actual_tokens=usage.total_tokens,
            )

    # --- routed calls (an alias with several targets) --------------------------------

    async def run_routed(
        self,
        receive: Receive,
        send: Send,
        picks: list[Pick],
        request: dict[str, Any],
        headers_of: Callable[[RouteInfo], dict[str, str]],
    ) -> None:
        """Make the plan's attempts in order until one answers the client. `self.route`
        and `self.prepared` are the first pick's (the app prepared its body); a later
        target re-sends the same request under its own upstream model. An exception ends
        it as `run`'s does."""
        try:
            plan = self.plan
            assert plan is not None
            routing = self.app.routing
            base_id = self.request_id
            bodies = {self.route.upstream_model: self.prepared.body}
            for number, pick in enumerate(picks, start=1):
                target = plan.targets[pick.index]
                if number > 1:
                    self.request_id = request_id_attempt(base_id, number)
                    self.started_ns = time.perf_counter_ns()  # latency and TTFT per attempt
                    self.ttft_ns = None
                    self.upstream_status = 0
                    body = bodies.get(target.upstream_model)
                    if body is None:
                        body = orjson.dumps({**request, "model": target.upstream_model})
                        bodies[target.upstream_model] = body
                    self.prepared = replace(self.prepared, body=body)
                self.route = target
                self.attempt = number
                self.reason = pick.reason
                self.last = number == len(picks)
                route_id = target.route_id or 0
                routing.acquire(route_id)
                try:
                    if await self.attempt_once(receive, send, headers_of(target)):
                        return
                finally:
                    routing.release(route_id)
        except BaseException:
            await self._interrupted()
            raise

    def report(self, *, ok: bool, retry_after: str | None = None) -> None:
        """Tell the routing state (its breaker) how this attempt went; not awaited. A
        single-target call has no breaker."""
        if self.plan is None:
            return
        seconds = retry_after_seconds(retry_after)
        self.app.routing.report(self.plan, self.route.route_id or 0, ok=ok, retry_after_s=seconds)

    def fail_over(self, outcome: Outcome) -> None:
        """Record this attempt as failed over (zero tokens) and move on: its write runs
        as a task that the final record awaits; it does not touch the hold."""
        assert self.plan is not None
        row, _ = self._row(outcome, failed_over=True)
        self.pending.append(asyncio.ensure_future(self.app.ledger.write(row)))

    async def attempt_once(self, receive: Receive, send: Send, headers: dict[str, str]) -> bool:
        """One attempt of a routed call; False when it failed over (nothing was sent to
        the client and another target is left), True when the client got its answer."""
        url = self.route.base_url + self.endpoint.upstream_path
        # The first-byte timeout bounds a stream's headers and first event, one deadline
        # for both. A whole answer's headers come only when it is complete: cutting them
        # would abandon work the upstream bills, so it has no first-byte timeout.
        timeout = self.route.first_byte_timeout_s if self.prepared.stream else None
        self.first_byte_deadline = (
            None if timeout is None else asyncio.get_running_loop().time() + timeout
        )
        try:
            response = await self.app.upstream.post(
                url, self.prepared.body, headers, head_timeout=timeout
            )
        except UpstreamError as exc:
            logger.warning(
                "upstream failure for %s (%s, target %s): %s",
                self.request_id,
                self.route.alias,
                self.route.target,
                exc,
            )
            self.report(ok=False)
            flag = (
                "first_byte_timeout"
                if isinstance(exc, UpstreamHeadTimeout)
                else "upstream_unreachable"
            )
            outcome = Outcome(TokenUsage(), None, "", Status.FAILED, [flag])
            if not self.last:
                self.fail_over(outcome)
                return False
            await self.record(outcome)
            await send_error(
                send,
                errors.UPSTREAM_UNAVAILABLE,
                f"The upstream for '{self.route.alias}' could not be reached (request {self.request_id}).",
                self.endpoint.anthropic_format,
                extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
            )
            return True
        self.upstream_status = response.status
        try:
            if retryable_status(response.status):
                self.report(ok=False, retry_after=response.headers.get("retry-after"))
                if not self.last:
                    try:  # for the log only: a stalled error body must not hold the call
                        body = await asyncio.wait_for(
                            response.read(), self.route.first_byte_timeout_s or _ERROR_BODY_WAIT_S
                        )
                    except (UpstreamError, TimeoutError):
                        body = b""
                    logger.warning(
                        "upstream answered %d for %s (%s, target %s), failing over: %r",
                        response.status,
                        self.request_id,
                        self.route.alias,
                        self.route.target,
                        body[:LOGGED_BODY_BYTES],
                    )
                    self.fail_over(
                        Outcome(
                            TokenUsage(), None, "", Status.UPSTREAM_ERROR, ["upstream_error_hidden"]
                        )
                    )
                    return False
            is_sse = response.content_type == "text/event-stream"
            if self.prepared.stream and response.status == 200 and is_sse:
                return await self.relay_stream(response, receive, send, defer_start=True)
            if not retryable_status(response.status):
                self.report(ok=True)  # the target answered (a 4xx is the request's fault)
            await self.relay_whole(response, send)
            return True
        finally:
            response.release()
