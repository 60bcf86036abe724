"""The reasoning-model simulator: a raw ASGI 3 app speaking OpenAI and Anthropic wire formats.

It is the upstream of the quick start, the end-to-end tests and the throughput benchmarks
(where it is also the "direct" baseline), so the hot path is kept lean: no framework,
orjson, hand-built SSE frames from pre-encoded words, and at zero delay a whole stream is
written with one `send`.

What is generated is decided by `engine` (deterministic per request body). This module
only frames it, paces it (`token_delay_s` per generated token, reasoning first) and
counts it: `/_sim/totals` holds what this process served since start or the last
`/_sim/reset`, and `/_sim/served` lists each counted generation (finish time, model,
endpoint, a fingerprint of the upstream credential, the token classes) so a test can
build a provider's usage report from what was actually served. The credential itself
never leaves the process: the fingerprint is the first 16 hex digits of its sha256. The
log keeps the last `SERVED_LOG_SIZE` generations; the hot path only appends a tuple. A request counts once its generation finishes, even if the client has
gone (streams keep "generating" after a disconnect, as an upstream keeps billing) and
even for `cut-stream` models whose connection is dropped before the usage frame.
Errors, including the `error-500` / `error-429` fault models, are not counted. Totals are
per process: run a single worker when reconciling against them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from metering.simulator import engine
from metering.simulator.engine import Generation, InvalidRequest
from metering.simulator.wire import (
    Frames,
    anthropic_usage,
    chat_frames,
    chat_message,
    chat_usage,
    message_frames,
    response_frames,
    response_object,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPENAI = "openai"
ANTHROPIC = "anthropic"
CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"
QUIRKS = ("vllm", "deepseek", "nonempty-choices", "llamacpp")
# Upstream failures served under `/faults/<kind>/v1/...` for the fault suite: a connection
# reset after part of the answer, an answer that stalls after its first bytes, a 200
# whose body is not the wire format, a server that takes the request and never sends
# headers (`hang`), a 200 stream that sends its headers but no event
# (`stall-before-first-event`), and a 200 stream whose first event is an error
# (`error-first-event`, as providers report overload after the headers). `hang` and
# `stall-before-first-event` wait until the client leaves (at most STALL_S). Nothing is
# generated or counted for them.
UPSTREAM_FAULTS = (
    "reset-mid-stream",
    "stall",
    "garbage",
    "hang",
    "stall-before-first-event",
    "error-first-event",
)
# The error event each wire sends mid-stream (`error-first-event`).
_ERROR_EVENTS = {
    ANTHROPIC: b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
    b'"message":"Overloaded (simulated)"}}\n\n',
    OPENAI: b'data: {"error":{"message":"The server is overloaded (simulated).",'
    b'"type":"server_error","param":null,"code":null}}\n\n',
}
STALL_S = 3600.0
SIM_MODELS = ("sim-reasoner", "sim-reasoner-mini", "sim-mini-noreason", "sim-thinker")
FAULT_500 = "error-500"
FAULT_429 = "error-429"
FAULT_CUT = "cut-stream"
DELAY_HEADER = b"x-sim-token-delay-ms"
# Sleeps shorter than this are folded into the next one, so tiny per-token delays
# cost one timer per batch of tokens instead of one per token.
MIN_SLEEP_S = 0.001
# How many generations `/_sim/served` remembers (the oldest are dropped first).
SERVED_LOG_SIZE = 100_000

_TOTAL_FIELDS = (
    "requests",
    "input_tokens",  # uncached input
    "cached_input_tokens",  # cache reads
    "cache_write_tokens",
    "output_tokens",  # visible output only
    "reasoning_tokens",
)
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
}


class StreamCut(Exception):
    """Raised after a partial stream so the server drops the connection (cut-stream)."""


class _HideStreamCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        return not (exc_info and isinstance(exc_info[1], StreamCut))


# One served generation: (finished at, unix s), model, endpoint, credential header value,
# uncached input, cache read, cache write, visible output, reasoning.
ServedEntry = tuple[float, str, str, bytes, int, int, int, int, int]


class Totals:
    """Usage served, overall and per endpoint path (quirk paths are their own endpoint),
    and the log of the last `SERVED_LOG_SIZE` generations behind it."""

    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}
        self.served: deque[ServedEntry] = deque(maxlen=SERVED_LOG_SIZE)
        self.served_count = 0
        self.reset()

    def reset(self) -> None:
        self._rows = {
            path: [0] * len(_TOTAL_FIELDS) for path in (CHAT_PATH, RESPONSES_PATH, MESSAGES_PATH)
        }
        self.served.clear()
        self.served_count = 0

    def add(self, endpoint: str, generation: Generation, credential: bytes = b"") -> None:
        row = self._rows.get(endpoint)
        if row is None:
            row = self._rows[endpoint] = [0] * len(_TOTAL_FIELDS)
        uncached = generation.uncached_input_tokens
        cache_write = generation.cache_write_tokens
        row[0] += 1
        row[1] += uncached
        row[2] += generation.cached_tokens
        row[3] += cache_write
        row[4] += generation.visible_tokens
        row[5] += generation.reasoning_tokens
        self.served_count += 1
        self.served.append(
            (
                time.time(),
                generation.model,
                endpoint,
                credential,
                uncached,
                generation.cached_tokens,
                cache_write,
                generation.visible_tokens,
                generation.reasoning_tokens,
            )
        )

    def served_snapshot(self) -> dict[str, Any]:
        """The served log as JSON-ready data; credentials become fingerprints here, off
        the hot path."""
        fingerprints: dict[bytes, str] = {}
        entries = []
        for finished, model, endpoint, credential, *counts in list(self.served):
            fingerprint = fingerprints.get(credential)
            if fingerprint is None:
                fingerprint = fingerprints[credential] = credential_fingerprint(credential)
            entries.append(
                {
                    "finished_at": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat(),
                    "model": model,
                    "endpoint": endpoint,
                    "key_fingerprint": fingerprint,
                    **dict(zip(_TOTAL_FIELDS[1:], counts, strict=True)),
                }
            )
        return {
            "served": entries,
            "total": self.served_count,
            "dropped": self.served_count - len(entries),
        }

    def snapshot(self) -> dict[str, Any]:
        overall = [sum(column) for column in zip(*self._rows.values(), strict=True)]
        return {
            **dict(zip(_TOTAL_FIELDS, overall, strict=True)),
            "by_endpoint": {
                path: dict(zip(_TOTAL_FIELDS, row, strict=True)) for path, row in self._rows.items()
            },
        }


def credential_fingerprint(header_value: bytes | str) -> str:
    """First 16 hex digits of sha256(key), where the key is the `x-api-key` value or the
    `Authorization` value without its `Bearer ` prefix; '' when there was none."""
    raw = header_value.encode() if isinstance(header_value, str) else header_value
    key = raw.strip()
    if key[:7].lower() == b"bearer ":
        key = key[7:].strip()
    if not key:
        return ""
    return hashlib.sha256(key).hexdigest()[:16]


class _Request:
    __slots__ = (
        "anthropic_version",
        "authorized",
        "credential",
        "delay_header",
        "endpoint",
        "receive",
        "rid",
        "wire",
    )

    def __init__(
        self, endpoint: str, wire: str, headers: list[tuple[bytes, bytes]], rid: str
    ) -> None:
        self.endpoint = endpoint
        self.wire = wire
        self.rid = rid
        self.authorized = False
        self.credential = b""
        self.delay_header: bytes | None = None
        self.anthropic_version = False
        self.receive: Receive | None = None  # set for the faults that wait for the client
        for name, value in headers:
            if name == b"authorization" or name == b"x-api-key":
                if value.strip():
                    self.authorized = True
                    self.credential = value
            elif name == DELAY_HEADER:
                self.delay_header = value
            elif name == b"anthropic-version":
                self.anthropic_version = True


class Simulator:
    """ASGI 3 application. Build it with `create_app`."""

    def __init__(self, *, token_delay_s: float) -> None:
        self.token_delay_s = token_delay_s
        self.totals = Totals()
        self._id_prefix = os.urandom(5).hex()
        self._ids = itertools.count(1)
        self._routes: dict[str, tuple[str, Any, str | None, str]] = {
            CHAT_PATH: ("POST", self._chat_completions, None, OPENAI),
            RESPONSES_PATH: ("POST", self._responses, None, OPENAI),
            MESSAGES_PATH: ("POST", self._messages, None, ANTHROPIC),
            MODELS_PATH: ("GET", self._models, None, OPENAI),
        }
        for quirk in QUIRKS:
            self._routes[f"/quirks/{quirk}{CHAT_PATH}"] = (
                "POST",
                self._chat_completions,
                quirk,
                OPENAI,
            )
            self._routes[f"/quirks/{quirk}{MODELS_PATH}"] = ("GET", self._models, quirk, OPENAI)
        for kind in UPSTREAM_FAULTS:
            for path, wire in ((CHAT_PATH, OPENAI), (MESSAGES_PATH, ANTHROPIC)):
                self._routes[f"/faults/{kind}{path}"] = ("POST", self._upstream_fault, kind, wire)
        self._internal: dict[tuple[str, str], Any] = {
            ("GET", "/_sim/totals"): self._sim_totals,
            ("GET", "/_sim/served"): self._sim_served,
            ("POST", "/_sim/reset"): self._sim_reset,
            ("GET", "/_sim/health"): self._sim_health,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        rid = f"{self._id_prefix}{next(self._ids):010x}"
        route = self._routes.get(path)
        if route is None:
            internal = self._internal.get((method, path))
            if internal is not None:
                await internal(send)
                return
            wire = ANTHROPIC if path.endswith("/messages") else OPENAI
            request = _Request(path, wire, [], rid)
            await _send_error(send, request, 404, f"Invalid URL ({method} {path})")
            return
        route_method, handler, quirk, wire = route
        request = _Request(path, wire, scope["headers"], rid)
        if method != route_method:
            await _send_error(
                send, request, 405, f"Method {method} not allowed for {path}; use {route_method}."
            )
            return
        if not request.authorized:
            await _send_error(send, request, 401, _missing_key_message(wire))
            return
        if route_method == "GET":
            await handler(send, request, quirk)
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before sending its body
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            message = (
                "We could not parse the JSON body of your request. The body must be a JSON object."
            )
            await _send_error(send, request, 400, message)
            return
        try:
            delay = self._delay_for(request)
        except ValueError as exc:
            await _send_error(send, request, 400, str(exc))
            return
        if handler == self._upstream_fault:
            request.receive = receive
        await handler(send, request, body, quirk, delay)

    # ---- pacing and accounting -------------------------------------------------------

    def _delay_for(self, request: _Request) -> float:
        if request.delay_header is None:
            return self.token_delay_s
        try:
            milliseconds = Decimal(request.delay_header.decode("ascii"))
        except (InvalidOperation, UnicodeDecodeError):
            milliseconds = Decimal(-1)
        if not milliseconds.is_finite() or milliseconds < 0:
            raise ValueError("x-sim-token-delay-ms must be a non-negative number of milliseconds.")
        return float(milliseconds / 1000)  # float-ok: a sleep duration, not money or tokens

    async def _generate_then_send_json(
        self,
        send: Send,
        request: _Request,
        generation: Generation,
        delay: float,
        build: Callable[[], Any],
    ) -> None:
        if delay > 0 and generation.output_tokens:
            await asyncio.sleep(generation.output_tokens * delay)
        self.totals.add(request.endpoint, generation, request.credential)
        await _send_json(send, request, 200, orjson.dumps(build()))

    async def _stream(
        self,
        send: Send,
        request: _Request,
        generation: Generation,
        delay: float,
        frames: Frames,
        visible_at: int,
    ) -> None:
        """Send `frames` paced by `delay`; a model named with FAULT_CUT is cut halfway
        through its visible text (`visible_at`: the index of the first visible frame)."""
        cut = FAULT_CUT in generation.model
        if cut:
            frames = frames[: visible_at + generation.visible_tokens // 2]
        headers = [*_SSE_HEADERS, *_id_headers(request)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pending: list[bytes] = []
        if delay > 0:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for due, data in frames:
                if due:
                    wait = started + due * delay - loop.time()
                    if wait >= MIN_SLEEP_S:
                        if pending:
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": b"".join(pending),
                                    "more_body": True,
                                }
                            )
                            pending = []
                        await asyncio.sleep(wait)
                pending.append(data)
        else:
            pending = [data for _, data in frames]
        # Generation is over: count before the last write so a client that has read the
        # whole stream always finds its request in the totals.
        self.totals.add(request.endpoint, generation, request.credential)
        await send({"type": "http.response.body", "body": b"".join(pending), "more_body": cut})
        if cut:
            raise StreamCut(request.rid)

    # ---- upstream faults ---------------------------------------------------------------

    async def _upstream_fault(
        self, send: Send, request: _Request, body: dict[str, Any], kind: str | None, delay: float
    ) -> None:
        """Misbehave as `kind` says, after looking like a normal answer for a moment."""
        stream = body.get("stream") is True
        if kind == "hang":
            await _until_disconnect(request.receive)
            return
        if kind == "error-first-event":
            headers = [*_SSE_HEADERS, *_id_headers(request)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _ERROR_EVENTS[request.wire]})
            return
        if kind == "stall-before-first-event":
            headers = [*_SSE_HEADERS, *_id_headers(request)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await _until_disconnect(request.receive)
            return
        if request.wire == ANTHROPIC:
            first = (
                b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_'
                + request.rid.encode()
                + b'","type":"message","role":"assistant","content":[],"model":"sim-thinker",'
                b'"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
            )
        else:
            first = (
                b'data: {"id":"chatcmpl-'
                + request.rid.encode()
                + b'","object":"chat.completion.chunk","created":0,"model":"sim-reasoner",'
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},'
                b'"finish_reason":null}]}\n\n'
            )
        if kind == "garbage":
            garbage = b"<html><body>502 \xff\xfe not json {{{</body></html>"
            if stream:
                headers = [*_SSE_HEADERS, *_id_headers(request)]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b"data: " + garbage + b"\n\n"})
            else:
                await _send_json(send, request, 200, garbage)
            return
        if stream:
            headers = [*_SSE_HEADERS, *_id_headers(request)]
        else:
            # announce a whole JSON body, then send only its start
            headers = [_JSON, (b"content-length", b"4096"), *_id_headers(request)]
            first = b'{"id":"chatcmpl-' + request.rid.encode() + b'","object":"chat.comp'
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        if kind == "stall":
            await asyncio.sleep(STALL_S)
        raise StreamCut(request.rid)

    # ---- OpenAI Chat Completions -----------------------------------------------------

    async def _chat_completions(
        self, send: Send, request: _Request, body: dict[str, Any], quirk: str | None, delay: float
    ) -> None:
        generation = await _planned(
            send,
            request,
            lambda: engine.plan_chat_completion(
                body, prompt_cache=quirk not in ("vllm", "llamacpp")
            ),
        )
        if generation is None:
            return
        created = int(time.time())
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            frames, visible_at = chat_frames(request.rid, created, generation, quirk, include_usage)
            await self._stream(send, request, generation, delay, frames, visible_at)
            return

        def build() -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{request.rid}",
                "object": "chat.completion",
                "created": created,
                "model": generation.model,
                "choices": [
                    {
                        "index": 0,
                        "message": chat_message(generation, quirk),
                        "logprobs": None,
                        "finish_reason": "length" if generation.truncated else "stop",
                    }
                ],
                "usage": chat_usage(generation, quirk),
                "service_tier": "default",
                "system_fingerprint": None,
            }

        await self._generate_then_send_json(send, request, generation, delay, build)

    # ---- OpenAI Responses --------------------------------------------------------------

    async def _responses(
        self, send: Send, request: _Request, body: dict[str, Any], quirk: str | None, delay: float
    ) -> None:
        generation = await _planned(send, request, lambda: engine.plan_response(body))
        if generation is None:
            return
        created = int(time.time())
        if body.get("stream") is True:
            frames, visible_at = response_frames(request.rid, created, body, generation)
            await self._stream(send, request, generation, delay, frames, visible_at)
            return
        await self._generate_then_send_json(
            send,
            request,
            generation,
            delay,
            lambda: response_object(request.rid, created, body, generation, final=True),
        )

    # ---- Anthropic Messages ------------------------------------------------------------

    async def _messages(
        self, send: Send, request: _Request, body: dict[str, Any], quirk: str | None, delay: float
    ) -> None:
        generation = await _planned(send, request, lambda: engine.plan_message(body))
        if generation is None:
            return
        omitted = engine.anthropic_thinking_display(body) == "omitted"
        if body.get("stream") is True:
            frames, visible_at = message_frames(request.rid, generation, omitted)
            await self._stream(send, request, generation, delay, frames, visible_at)
            return

        def build() -> dict[str, Any]:
            content: list[dict[str, Any]] = []
            if generation.reasoning_tokens:
                thinking = "" if omitted else generation.reasoning_text
                content.append(
                    {"type": "thinking", "thinking": thinking, "signature": generation.signature}
                )
            if generation.visible_tokens:
                content.append({"type": "text", "text": generation.visible_text})
            return {
                "id": f"msg_{request.rid}",
                "type": "message",
                "role": "assistant",
                "model": generation.model,
                "content": content,
                "stop_reason": "max_tokens" if generation.truncated else "end_turn",
                "stop_sequence": None,
                "usage": anthropic_usage(generation, generation.output_tokens),
            }

        await self._generate_then_send_json(send, request, generation, delay, build)

    # ---- models and simulator control --------------------------------------------------

    async def _models(self, send: Send, request: _Request, quirk: str | None) -> None:
        data: list[dict[str, Any]]
        if request.anthropic_version and quirk is None:
            data = [
                {
                    "type": "model",
                    "id": model,
                    "display_name": model,
                    "created_at": "2025-01-01T00:00:00Z",
                }
                for model in SIM_MODELS
            ]
            payload = {
                "data": data,
                "has_more": False,
                "first_id": SIM_MODELS[0],
                "last_id": SIM_MODELS[-1],
            }
        else:
            data = [
                {
                    "id": model,
                    "object": "model",
                    "created": 1735689600,
                    "owned_by": "reckon-simulator",
                }
                for model in SIM_MODELS
            ]
            payload = {"object": "list", "data": data}
        await _send_json(send, request, 200, orjson.dumps(payload))

    async def _sim_totals(self, send: Send) -> None:
        await _send_plain_json(send, orjson.dumps(self.totals.snapshot()))

    async def _sim_served(self, send: Send) -> None:
        await _send_plain_json(send, orjson.dumps(self.totals.served_snapshot()))

    async def _sim_reset(self, send: Send) -> None:
        self.totals.reset()
        await _send_plain_json(send, orjson.dumps(self.totals.snapshot()))

    async def _sim_health(self, send: Send) -> None:
        await _send_plain_json(send, b'{"status":"ok"}')


def create_app(
    *, token_delay_s: Decimal | str | int = 0, tokens_per_second: int | None = None
) -> Simulator:
    """A fresh simulator with its own totals.

    `token_delay_s` is the time to generate one output token (reasoning or visible);
    `tokens_per_second`, when given, overrides it with 1/tps. Prefill is instantaneous.
    A request header `x-sim-token-delay-ms` overrides both for that request.
    """
    if tokens_per_second is not None:
        if tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        delay = 1 / tokens_per_second
    else:
        seconds = Decimal(str(token_delay_s))
        if not seconds.is_finite() or seconds < 0:
            raise ValueError("token_delay_s must be a non-negative number of seconds")
        delay = float(seconds)  # float-ok: a sleep duration
    error_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _HideStreamCut) for existing in error_logger.filters):
        error_logger.addFilter(_HideStreamCut())
    return Simulator(token_delay_s=delay)


def create_app_from_env() -> Simulator:
    """Factory reading RECKON_SIM_TOKEN_DELAY_MS and RECKON_SIM_TOKENS_PER_SECOND."""
    delay_ms = os.environ.get("RECKON_SIM_TOKEN_DELAY_MS") or "0"
    tokens_per_second = os.environ.get("RECKON_SIM_TOKENS_PER_SECOND")
    return create_app(
        token_delay_s=Decimal(delay_ms) / 1000,
        tokens_per_second=int(tokens_per_second) if tokens_per_second else None,
    )


# ---- plumbing ----------------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive | None) -> None:
    """Wait, answering nothing more, until the client goes away (at most STALL_S)."""
    assert receive is not None

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), STALL_S)
    except TimeoutError:
        pass


def _id_headers(request: _Request) -> list[tuple[bytes, bytes]]:
    request_id = b"req_" + request.rid.encode()
    if request.wire == ANTHROPIC:
        return [(b"x-request-id", request_id), (b"request-id", request_id)]
    return [(b"x-request-id", request_id)]


async def _send_json(
    send: Send,
    request: _Request,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [_JSON, (b"content-length", b"%d" % len(body)), *_id_headers(request)]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_plain_json(send: Send, body: bytes) -> None:
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send,
    request: _Request,
    status: int,
    message: str,
    param: str | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if request.wire == ANTHROPIC:
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_ERROR_TYPES[status], "message": message},
            "request_id": f"req_{request.rid}",
        }
    else:
        error_type, code = _OPENAI_ERROR_TYPES[status]
        payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    await _send_json(send, request, status, orjson.dumps(payload), extra)


async def _planned(
    send: Send, request: _Request, plan: Callable[[], Generation]
) -> Generation | None:
    """The generation a request asks for, or None once its 400 error or the fault its
    model name asks for has been sent."""
    try:
        generation = plan()
    except InvalidRequest as exc:
        await _send_error(send, request, 400, exc.message, exc.param)
        return None
    if await _fault(send, request, generation.model):
        return None
    return generation


async def _fault(send: Send, request: _Request, model: str) -> bool:
    """Serve the error a fault-injection model name asks for; True if one was served."""
    if FAULT_500 in model:
        await _send_error(
            send, request, 500, "The server had an error while processing your request. (simulated)"
        )
        return True
    if FAULT_429 in model:
        message = "Rate limit reached for requests (simulated)."
        await _send_error(send, request, 429, message, extra=[(b"retry-after", b"1")])
        return True
    return False


def _missing_key_message(wire: str) -> str:
    if wire == ANTHROPIC:
        return "x-api-key header is required"
    return (
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )


app = create_app_from_env()
