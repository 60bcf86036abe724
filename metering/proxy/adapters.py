"""Provider adapters: what to send upstream, and what a response cost.

One adapter per client-facing endpoint. Each knows its wire format: how to rewrite the
request for the upstream, how to read usage from a whole response body, and how to follow
a stream (which events carry usage, which one is terminal, what to hide from the client).
Token arithmetic itself lives in metering.usage.

The stream path searches bytes with `find`, never `sub in data`: CPython's bytes `in`
first tries `sub` as an integer, and raises and clears a formatted TypeError (about 1,700
instructions, callgrind) before it searches; `find` goes to the search at once.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from metering.models import Route, UsageRecord
from metering.proxy.sse import SseEvent, block_fields, format_event
from metering.proxy.textscan import TextScan
from metering.usage import (
    TextCounts,
    TokenUsage,
    high_water,
    merge_anthropic_stream_usage,
    usage_from_anthropic,
    usage_from_openai_chat,
    usage_from_openai_responses,
)

Status = UsageRecord.Status


@dataclass(slots=True)
class Outcome:
    """What one upstream call consumed, as the proxy observed it."""

    usage: TokenUsage
    raw_usage: Any
    response_id: str
    status: str
    flags: list[str] = field(default_factory=list)


class InvalidRequest(Exception):
    """The client's request body cannot be forwarded; message is for the client."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


# a run of one counted event in its usual form: (its bytes before the data, its newlines)
_ONE_EVENT = {
    None: (b"data: ", 2),
    b"content_block_delta": (b"event: content_block_delta\ndata: ", 3),
}


class StreamTracker:
    """Follows one upstream SSE stream. `feed` returns the bytes to forward (None drops)."""

    __slots__ = (
        "terminal",
        "first_output_seen",
        "errored",
        "response_id",
        "text",
        "count_text",
        "scan",
    )

    def __init__(self, *, count_text: bool) -> None:
        self.terminal = False  # the event just fed ends the stream: commit before forwarding
        self.first_output_seen = False
        self.errored = False
        self.response_id = ""
        self.count_text = count_text
        self.text = TextCounts()
        self.scan: TextScan | None = None  # made once the fast path counts text

    def feed(self, event: SseEvent) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def passes(self, events: bytes) -> bool:
        """True if `feed` would forward each of these complete events as it is and learn
        nothing from them but text counts, which are then counted (a byte scan, see
        metering.proxy.textscan): the relay may send them on without feeding them. False
        is always safe and changes nothing (they are fed one by one)."""
        return False

    def _count_run(self, events: bytes, scan: TextScan, counted: bytes | None) -> bool:
        """Count the text of a run of complete events as `feed` would: the events named
        `counted` (None: all), each as its scan counts its data (None: decline the run,
        nothing counted)."""
        # the usual run, one event of the counted kind in its usual form: no split
        head, newlines = _ONE_EVENT[counted]
        if events.startswith(head) and events.count(10) == newlines:
            counts = scan.count(events[len(head) : -2])
            if counts is None:
                return False
            self.text.visible_chars += counts[0]
            self.text.reasoning_chars += counts[1]
            return True
        visible = reasoning = 0
        for block in events.split(b"\n\n"):
            if not block:
                continue
            name, data = block_fields(block)
            if counted is not None and name != counted:
                continue
            counts = scan.count(data)
            if counts is None:
                return False
            visible += counts[0]
            reasoning += counts[1]
        self.text.visible_chars += visible
        self.text.reasoning_chars += reasoning
        return True

    def outcome(self, *, completed: bool) -> Outcome:  # pragma: no cover - interface
        raise NotImplementedError

    def _status(self, *, completed: bool) -> str:
        if self.errored:
            return Status.UPSTREAM_ERROR
        return Status.COMPLETED if completed else Status.INCOMPLETE


# --- OpenAI chat completions --------------------------------------------------------

# Where a delta's text value starts (content or reasoning), as compact JSON writes its keys:
# the byte scan for first output, and where TextScan learns a shape.
_CHAT_TEXT_KEYS = (b'"reasoning_content":"', b'"content":"', b'"reasoning":"')


def _has_output(data: bytes) -> bool:
    """A byte scan: a chunk whose delta has a non-empty content or reasoning string."""
    for key in _CHAT_TEXT_KEYS:
        at = data.find(key)
        while at >= 0:
            if data[at + len(key) : at + len(key) + 1] != b'"':  # not the empty string
                return True
            at = data.find(key, at + len(key))
    return False


# Everything `ChatStreamTracker.feed` learns from one chunk, read in one place:
# (its id, or None; an error chunk ("error" without "choices"); its usage object, or None;
# the deltas' visible and reasoning characters; whether a delta has output, the first)
_ChatChunk = tuple[Any, bool, dict[str, Any] | None, int, int, bool]
_NOT_A_CHUNK: _ChatChunk = (None, False, None, 0, 0, False)


def _read_chat_chunk(chunk: Any) -> _ChatChunk:
    if not isinstance(chunk, dict):
        return _NOT_A_CHUNK
    if "error" in chunk and "choices" not in chunk:
        return chunk.get("id"), True, None, 0, 0, False
    usage = chunk.get("usage")
    choices = chunk.get("choices")
    visible = reasoning_chars = 0
    output = False
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if content or reasoning:
                output = True
            visible += _text_len(content)
            reasoning_chars += _text_len(reasoning)
    if not isinstance(usage, dict):
        usage = None
    return chunk.get("id"), False, usage, visible, reasoning_chars, output


def _chat_chunk_text(data: bytes) -> tuple[int, int] | None:
    """TextScan's effect: a chunk's (visible, reasoning) characters if they are all it
    tells a tracker that knows the stream's id and first output; None if it tells more."""
    _, error, usage, visible, reasoning, _ = _read_chat_chunk(_loads(data))
    if error or usage is not None:
        return None
    return visible, reasoning


class ChatStreamTracker(StreamTracker):
    __slots__ = ("hide_usage", "usage")

    def __init__(self, *, count_text: bool, hide_usage: bool) -> None:
        super().__init__(count_text=count_text)
        self.hide_usage = hide_usage  # the client did not ask for usage; we did
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> bytes | None:
        data = event.data
        if data == b"[DONE]":
            self.terminal = True
            return event.raw
        carries_usage = data.find(b'"usage"') >= 0 and data.find(b'"usage":null') < 0
        if not (carries_usage or self.count_text or not self.response_id):
            if not self.first_output_seen:
                self.first_output_seen = _has_output(data)
            return event.raw
        parsed = _loads(data)
        chunk_id, error, usage, visible, reasoning, output = _read_chat_chunk(parsed)
        if not self.response_id:
            self.response_id = str(chunk_id or "")
        if error:
            self.errored = True
            return event.raw
        if output:
            self.first_output_seen = True
        if self.count_text:
            self.text.visible_chars += visible
            self.text.reasoning_chars += reasoning
        if usage is None:
            return event.raw
        self.usage = high_water(self.usage, usage)
        if not self.hide_usage:
            return event.raw
        if not parsed.get("choices"):  # the extra usage chunk we asked for: hide it
            return None
        parsed["usage"] = None  # usage riding on a content chunk (some servers): strip it
        return format_event(orjson.dumps(parsed), event.event)

    def passes(self, events: bytes) -> bool:
        # feed's own test, on the run of events: no [DONE], no usage but null ones, and
        # nothing left to learn but text counts (the id, the first output are known)
        if not (
            self.first_output_seen
            and self.response_id
            and events.find(b"[DONE]") < 0
            and events.count(b'"usage"') == events.count(b'"usage":null')
        ):
            return False
        if not self.count_text:
            return True
        if self.scan is None:
            self.scan = TextScan(_chat_chunk_text, _CHAT_TEXT_KEYS)
        return self._count_run(events, self.scan, None)

    def outcome(self, *, completed: bool) -> Outcome:
        usage = usage_from_openai_chat(self.usage, self.text if self.count_text else None)
        return Outcome(usage, self.usage, self.response_id, self._status(completed=completed))


def chat_outcome(body: Any, *, count_text: bool) -> Outcome:
    text = TextCounts()
    if count_text:
        for choice in body.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                text.visible_chars += _text_len(message.get("content"))
                text.reasoning_chars += _text_len(
                    message.get("reasoning_content") or message.get("reasoning")
                )
    raw = body.get("usage")
    usage = usage_from_openai_chat(raw, text if count_text else None)
    return Outcome(usage, raw, str(body.get("id") or ""), Status.COMPLETED)


# --- OpenAI responses --------------------------------------------------------------

_RESPONSES_TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class ResponsesStreamTracker(StreamTracker):
    __slots__ = ("usage",)

    def __init__(self, *, count_text: bool) -> None:
        super().__init__(count_text=count_text)
        self.usage: Mapping[str, Any] | None = None

    def feed(self, event: SseEvent) -> bytes | None:
        name = event.event
        if not name:  # servers that omit the event line: the type is in the data
            parsed = _loads(event.data)
            name = str(parsed.get("type", "")).encode() if isinstance(parsed, dict) else b""
        if name in _RESPONSES_TERMINAL:
            payload = _loads(event.data)
            response = payload.get("response") if isinstance(payload, dict) else None
            if isinstance(response, dict):
                self.usage = response.get("usage")
                self.response_id = str(response.get("id") or "")
                if name == b"response.failed":
                    self.errored = True
            self.terminal = True
        elif name == b"error":
            self.errored = True
        elif name.endswith(b".delta"):
            self.first_output_seen = True
            if self.count_text:
                payload = _loads(event.data)
                delta = _text_len(payload.get("delta")) if isinstance(payload, dict) else 0
                if name.find(b"reasoning") >= 0:
                    self.text.reasoning_chars += delta
                elif name == b"response.output_text.delta":
                    self.text.visible_chars += delta
        return event.raw

    def passes(self, events: bytes) -> bool:
        # a terminal event is named in its event line or, without one, in its data
        return (
            self.first_output_seen
            and not self.count_text
            and events.find(b"response.completed") < 0
            and events.find(b"response.incomplete") < 0
            and events.find(b"response.failed") < 0
            and events.find(b"error") < 0
        )

    def outcome(self, *, completed: bool) -> Outcome:
        usage = usage_from_openai_responses(self.usage, self.text if self.count_text else None)
        return Outcome(usage, self.usage, self.response_id, self._status(completed=completed))


def responses_outcome(body: Any, *, count_text: bool) -> Outcome:
    text = TextCounts()
    if count_text:
        for item in body.get("output") or []:
            if not isinstance(item, dict):
                continue
            parts = (item.get("content") or []) + (item.get("summary") or [])
            for part in parts:
                if not isinstance(part, dict):
                    continue
                if item.get("type") == "reasoning":
                    text.reasoning_chars += _text_len(part.get("text"))
                elif part.get("type") == "output_text":
                    text.visible_chars += _text_len(part.get("text"))
    raw = body.get("usage")
    usage = usage_from_openai_responses(raw, text if count_text else None)
    status = Status.UPSTREAM_ERROR if body.get("status") == "failed" else Status.COMPLETED
    return Outcome(usage, raw, str(body.get("id") or ""), status)


# --- Anthropic messages ------------------------------------------------------------


def _message_delta_text(data: bytes) -> tuple[int, int]:
    """A content_block_delta's (visible, reasoning) characters: text and thinking."""
    payload = _loads(data)
    delta = payload.get("delta") if isinstance(payload, dict) else None
    if not isinstance(delta, dict):
        return 0, 0
    return _text_len(delta.get("text")), _text_len(delta.get("thinking"))


_MESSAGES_TEXT_KEYS = (b'"thinking":"', b'"text":"')


class MessagesStreamTracker(StreamTracker):
    __slots__ = ("start_usage", "delta_usage", "thinking_seen")

    def __init__(self) -> None:
        super().__init__(count_text=True)
        self.start_usage: Mapping[str, Any] | None = None
        self.delta_usage: Mapping[str, Any] | None = None
        self.thinking_seen = False

    def feed(self, event: SseEvent) -> bytes | None:
        name = event.event
        if name == b"content_block_delta":
            self.first_output_seen = True
            if self.thinking_seen:  # text counts only matter to estimate thinking
                visible, reasoning = _message_delta_text(event.data)
                self.text.visible_chars += visible
                self.text.reasoning_chars += reasoning
        elif name == b"content_block_start":
            if event.data.find(b'"thinking"') >= 0 or event.data.find(b'"redacted_thinking"') >= 0:
                self.thinking_seen = True
        elif name == b"message_delta":
            payload = _loads(event.data)
            if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                self.delta_usage = payload["usage"]  # cumulative: the last one wins
        elif name == b"message_start":
            payload = _loads(event.data)
            message = payload.get("message") if isinstance(payload, dict) else None
            if isinstance(message, dict):
                self.response_id = str(message.get("id") or "")
                if isinstance(message.get("usage"), dict):
                    self.start_usage = message["usage"]
        elif name == b"message_stop":
            self.terminal = True
        elif name == b"error":
            self.errored = True
        return event.raw

    def passes(self, events: bytes) -> bool:
        # message_start, message_delta and message_stop all name "message_"; what is left
        # (deltas, pings, block stops) changes nothing but, once a thinking block is seen,
        # the text counts of the deltas
        if not (
            self.first_output_seen
            and events.find(b"message_") < 0
            and events.find(b"content_block_start") < 0
            and events.find(b"error") < 0
        ):
            return False
        if not self.thinking_seen:
            return True
        if self.scan is None:
            self.scan = TextScan(_message_delta_text, _MESSAGES_TEXT_KEYS)
        return self._count_run(events, self.scan, b"content_block_delta")

    def outcome(self, *, completed: bool) -> Outcome:
        raw = merge_anthropic_stream_usage(self.start_usage, self.delta_usage)
        usage = usage_from_anthropic(raw, self.text if self.thinking_seen else None)
        flags = []
        if self.delta_usage is None and not completed:
            # cut before the final message_delta: message_start's output count is a
            # placeholder, not what the upstream generated
            flags.append("missing_final_usage")
        return Outcome(usage, raw, self.response_id, self._status(completed=completed), flags)


def messages_outcome(body: Any, *, count_text: bool) -> Outcome:
    text = TextCounts()
    for block in body.get("content") or []:
        if isinstance(block, dict):
            text.reasoning_chars += _text_len(block.get("thinking"))
            text.visible_chars += _text_len(block.get("text"))
    raw = body.get("usage")
    usage = usage_from_anthropic(raw, text)
    return Outcome(usage, raw, str(body.get("id") or ""), Status.COMPLETED)


# --- Endpoints -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # UsageRecord.Endpoint value
    upstream_path: str  # appended to the route's base URL
    anthropic_format: bool  # errors and auth in Anthropic's shape
    providers: frozenset[str]  # route providers that can serve it
    outcome_from_body: Callable[..., Outcome]


_OPENAI_SHAPED = frozenset({Route.Provider.OPENAI, Route.Provider.OPENAI_COMPATIBLE})
_ANTHROPIC = frozenset({Route.Provider.ANTHROPIC})

_E = UsageRecord.Endpoint
CHAT = Endpoint(_E.CHAT_COMPLETIONS, "/chat/completions", False, _OPENAI_SHAPED, chat_outcome)
RESPONSES = Endpoint(_E.RESPONSES, "/responses", False, _OPENAI_SHAPED, responses_outcome)
MESSAGES = Endpoint(_E.MESSAGES, "/messages", True, _ANTHROPIC, messages_outcome)

# The client-facing paths: the upstream path under the proxy's /v1.
ENDPOINTS_BY_PATH = {"/v1" + e.upstream_path: e for e in (CHAT, RESPONSES, MESSAGES)}


@dataclass(slots=True)
class PreparedCall:
    body: bytes  # the request to send upstream
    stream: bool
    hide_usage: bool  # we asked the upstream for stream usage the client did not ask for


def prepare_call(endpoint: Endpoint, request: dict[str, Any], upstream_model: str) -> PreparedCall:
    """Validate the parts of a request the proxy depends on, and rewrite it for upstream."""
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", "stream")
    request["model"] = upstream_model
    hide_usage = False
    if stream and endpoint is CHAT:
        options = request.get("stream_options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", "stream_options")
        if options.get("include_usage") is not True:
            hide_usage = True
            request["stream_options"] = {**options, "include_usage": True}
    return PreparedCall(compact_dumps(request), stream, hide_usage)


def compact_dumps(value: Any) -> bytes:
    """orjson.dumps, as a bytes object of its own size: orjson hands back its write buffer
    (4 KiB for a small request, measured with tracemalloc), and a prepared body lives as
    long as its call: for a stream, minutes, times every stream open."""
    return bytes(memoryview(orjson.dumps(value)))


def stream_tracker_for(endpoint: Endpoint, *, provider: str, hide_usage: bool) -> StreamTracker:
    # Only servers that may omit reasoning counts need the text counted to estimate it.
    count_text = provider == Route.Provider.OPENAI_COMPATIBLE
    if endpoint is CHAT:
        return ChatStreamTracker(count_text=count_text, hide_usage=hide_usage)
    if endpoint is RESPONSES:
        return ResponsesStreamTracker(count_text=count_text)
    return MessagesStreamTracker()
