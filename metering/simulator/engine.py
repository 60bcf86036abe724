"""Deterministic generation for the reasoning-model simulator.

Pure functions: a parsed request body in, a `Generation` out. No I/O, no clock, no
`hash()`, no unseeded randomness, so the same body gives the same usage and the same
text in every process. Tests and benchmarks can call the `plan_*` functions to compute
the exact values the simulator will serve.

Rules (all integer arithmetic; `tok(s) = ceil(len(s) / 4)`, `len` in code points):

Input tokens
    3 per request + 4 per message (a system prompt / `instructions` counts as a message)
    + tok(piece) for every text piece (string content, each text part, tool-call
    names/arguments, tool outputs, Anthropic thinking text) + tok(compact JSON of each
    tool definition). Images and other non-text parts count 0.

Digest
    sha256 over the model name and every message's role and text pieces (not the tools,
    effort, budget or caps, so the visible answer is identical across efforts). u32(a) is
    the big-endian integer of digest bytes [a, a+4).

Visible answer
    V0 = 8 + u32(0) % 57 tokens (8..64). One token is one word of a fixed vocabulary.

Reasoning (before caps)
    OpenAI effort (`reasoning_effort`, Responses `reasoning.effort`, default "medium"):
    none -> 0; minimal -> u32(8) % 4; otherwise V0 * M * (75 + u32(4) % 51) // 100 with
    M = low 1, medium 4, high 10, xhigh 16, max 24.
    Anthropic `thinking: {"type": "enabled", "budget_tokens": B}` ->
    B * (25 + u32(12) % 51) // 100 (25-75 % of the budget, always <= B); as the real API,
    B must be < max_tokens (400 otherwise), but the 1024 minimum is not enforced.
    Anthropic `thinking: {"type": "adaptive"}` -> the effort formula with
    `output_config.effort` (default "high"). No thinking config (or "disabled") -> 0.
    A model name containing "mini-noreason" never reasons.

Caps
    cap = `max_completion_tokens` (else legacy `max_tokens`) | `max_output_tokens` |
    Anthropic `max_tokens`. If R0 + V0 > cap: reasoning is consumed first,
    R = min(R0, cap), V = cap - R, and the answer is truncated ("length" /
    "max_output_tokens" / "max_tokens").

Prompt cache
    OpenAI-style (chat, Responses, DeepSeek quirk): cached = (P - 1) // 128 * 128 when
    that is >= 1024, else 0 (a subset of prompt tokens P); no cache writes.
    Anthropic: the prefix up to and including the last block carrying `cache_control`
    (order: tools, system, messages; the 3-token request overhead belongs to it) is
    cached when it holds >= 1024 tokens. sha256 of the prefix text decides, fixed per
    prefix: first byte even -> cache write (tokens up to the last `ttl: "1h"` breakpoint
    are 1 h writes, the rest 5 min writes), odd -> cache read. `input_tokens` is the
    rest (uncached).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

REQUEST_OVERHEAD_TOKENS = 3
MESSAGE_OVERHEAD_TOKENS = 4
MIN_VISIBLE_TOKENS = 8
VISIBLE_TOKENS_SPAN = 57  # visible answer: 8..64 tokens
OPENAI_CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_GRANULARITY = 128
ANTHROPIC_CACHE_MIN_TOKENS = 1024
NO_REASONING_MARKER = "mini-noreason"

OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")
# Reasoning length as a multiple of the visible answer, per effort.
EFFORT_MULTIPLIERS = {"low": 1, "medium": 4, "high": 10, "xhigh": 16, "max": 24}
OPENAI_DEFAULT_EFFORT = "medium"
ANTHROPIC_DEFAULT_ADAPTIVE_EFFORT = "high"

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three states himself few house use during without again place around however home "
    "small found thought went say part once general high upon school every does got united "
    "left number course war until always away something fact though water less public put "
    "think almost hand enough far took head yet government system better set told nothing "
    "night end why called find going look asked later knew point next program city business "
    "give group toward young days let room president side social given present several "
    "order national second possible rather per face among form important often things "
    "looked early white case john become large big need four within felt along children "
    "saw best church ever least power development light thing seemed family interest want"
).split()
_SEQUENCE_LENGTH = 4096


def _build_sequence() -> tuple[str, ...]:
    # A fixed pseudo-random walk over the vocabulary (64-bit LCG, fixed seed).
    state = 0x5EC0_4E11_5EED_0001
    words = []
    for _ in range(_SEQUENCE_LENGTH):
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFF_FFFF_FFFF_FFFF
        words.append(_VOCABULARY[(state >> 33) % len(_VOCABULARY)])
    return tuple(words)


_WORDS = _build_sequence()
# Token i > 0 of a text is " word"; token 0 is "word". JSON-encoded copies for streaming.
_SPACED_WORDS = tuple(" " + word for word in _WORDS)
WORDS_JSON = tuple(orjson.dumps(word) for word in _WORDS)
SPACED_WORDS_JSON = tuple(orjson.dumps(word) for word in _SPACED_WORDS)


class InvalidRequest(Exception):
    """The request body cannot be served; the app maps it to a provider 400 error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Generation:
    """What the simulated model reads and writes for one request. Counts in tokens."""

    model: str
    prompt_tokens: int  # all input tokens: uncached + cache read + cache write
    cached_tokens: int  # cache reads, a subset of prompt_tokens
    cache_write_5m_tokens: int  # Anthropic 5-minute cache writes, a subset of prompt_tokens
    cache_write_1h_tokens: int  # Anthropic 1-hour cache writes, a subset of prompt_tokens
    reasoning_tokens: int  # hidden reasoning / thinking tokens (billed as output)
    visible_tokens: int  # tokens of the visible answer
    truncated: bool  # the output cap was hit
    visible_start: int  # offset of the answer in the word sequence
    reasoning_start: int  # offset of the reasoning text in the word sequence
    digest: bytes

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens - self.cache_write_tokens

    @property
    def output_tokens(self) -> int:
        """Billed output: reasoning plus visible."""
        return self.reasoning_tokens + self.visible_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def visible_text(self) -> str:
        return "".join(text_pieces(self.visible_start, self.visible_tokens))

    @property
    def reasoning_text(self) -> str:
        return "".join(text_pieces(self.reasoning_start, self.reasoning_tokens))

    @property
    def signature(self) -> str:
        """Opaque Anthropic thinking signature, fixed per generation."""
        raw = hashlib.sha256(self.digest + self.reasoning_tokens.to_bytes(8, "big")).digest()
        return base64.b64encode(raw + self.digest).decode("ascii")


def text_pieces(start: int, count: int) -> list[str]:
    """The per-token text deltas of a text of `count` tokens starting at `start`."""
    pieces = _cyclic(_SPACED_WORDS, start, count)
    if pieces:
        pieces[0] = _WORDS[start % _SEQUENCE_LENGTH]
    return pieces


def json_pieces(start: int, count: int) -> list[bytes]:
    """`text_pieces` already encoded as JSON strings (for hand-built SSE frames)."""
    pieces = _cyclic(SPACED_WORDS_JSON, start, count)
    if pieces:
        pieces[0] = WORDS_JSON[start % _SEQUENCE_LENGTH]
    return pieces


def _cyclic(sequence: Sequence[Any], start: int, count: int) -> list[Any]:
    out: list[Any] = []
    start %= _SEQUENCE_LENGTH
    while count > 0:
        take = min(count, _SEQUENCE_LENGTH - start)
        out.extend(sequence[start : start + take])
        count -= take
        start = 0
    return out


def tokens_for_text(text: str) -> int:
    return (len(text) + 3) // 4


def plan_chat_completion(body: Mapping[str, Any], *, prompt_cache: bool = True) -> Generation:
    """OpenAI Chat Completions (and the OpenAI-compatible quirk servers)."""
    model = _require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    hasher = _start_digest(model)
    prompt = REQUEST_OVERHEAD_TOKENS + _tools_tokens(body.get("tools"))
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", "messages")
        prompt += MESSAGE_OVERHEAD_TOKENS + _digest_item(hasher, message)
    effort = body.get("reasoning_effort")
    effort = OPENAI_DEFAULT_EFFORT if effort is None else effort
    if effort not in OPENAI_EFFORTS:
        raise InvalidRequest(f"Unsupported value: '{effort}'.", "reasoning_effort")
    cap_name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    cap = _optional_positive_int(body, cap_name)
    digest = hasher.digest()
    return _finish(
        model,
        digest,
        prompt,
        _openai_cached(prompt) if prompt_cache else 0,
        0,
        0,
        _effort_reasoning(model, digest, effort),
        cap,
    )


def plan_response(body: Mapping[str, Any]) -> Generation:
    """OpenAI Responses."""
    model = _require_model(body)
    items = body.get("input")
    hasher = _start_digest(model)
    prompt = REQUEST_OVERHEAD_TOKENS + _tools_tokens(body.get("tools"))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        prompt += MESSAGE_OVERHEAD_TOKENS + _digest_item(
            hasher, {"role": "developer", "content": instructions}
        )
    if isinstance(items, str):
        prompt += MESSAGE_OVERHEAD_TOKENS + _digest_item(hasher, {"role": "user", "content": items})
    elif isinstance(items, list) and items:
        for item in items:
            if not isinstance(item, dict):
                raise InvalidRequest("Each input item must be an object.", "input")
            prompt += MESSAGE_OVERHEAD_TOKENS + _digest_item(hasher, item)
    else:
        raise InvalidRequest("'input' must be a string or a non-empty array.", "input")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    effort = OPENAI_DEFAULT_EFFORT if effort is None else effort
    if effort not in OPENAI_EFFORTS:
        raise InvalidRequest(f"Unsupported value: '{effort}'.", "reasoning.effort")
    cap = _optional_positive_int(body, "max_output_tokens")
    digest = hasher.digest()
    return _finish(
        model,
        digest,
        prompt,
        _openai_cached(prompt),
        0,
        0,
        _effort_reasoning(model, digest, effort),
        cap,
    )


def plan_message(body: Mapping[str, Any]) -> Generation:
    """Anthropic Messages."""
    model = _require_model(body)
    max_tokens = _optional_positive_int(body, "max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required", "messages")

    hasher = _start_digest(model)
    prefix = _start_digest(model)
    running = REQUEST_OVERHEAD_TOKENS
    breakpoint_total = 0  # tokens up to the last cache_control breakpoint
    breakpoint_1h = 0  # tokens up to the last 1-hour breakpoint
    prefix_digest = b"\x00"  # digest of the text up to the last breakpoint
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                encoded = orjson.dumps(tool)
                running += (len(encoded) + 3) // 4
                prefix.update(encoded)
                if isinstance(tool.get("cache_control"), dict):
                    breakpoint_total, breakpoint_1h = _breakpoint(tool, running, breakpoint_1h)
                    prefix_digest = prefix.copy().digest()
    turns: list[tuple[str, Any]] = []
    system = body.get("system")
    if system is not None:
        turns.append(("system", system))
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("messages: each message must be an object", "messages")
        turns.append((str(message.get("role", "")), message.get("content")))
    for role, content in turns:
        running += MESSAGE_OVERHEAD_TOKENS
        hasher.update(role.encode() + b"\x1f")
        prefix.update(role.encode() + b"\x1f")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise InvalidRequest(
                f"{role}: content must be a string or an array of blocks", "messages"
            )
        for block in blocks:
            if not isinstance(block, dict):
                raise InvalidRequest(f"{role}: each content block must be an object", "messages")
            for text in _anthropic_block_texts(block):
                encoded = text.encode("utf-8", "surrogatepass")
                hasher.update(encoded + b"\x1e")
                prefix.update(encoded + b"\x1e")
                running += tokens_for_text(text)
            if isinstance(block.get("cache_control"), dict):
                breakpoint_total, breakpoint_1h = _breakpoint(block, running, breakpoint_1h)
                prefix_digest = prefix.copy().digest()
        hasher.update(b"\x1d")
        prefix.update(b"\x1d")
    prompt = running

    cache_read = cache_5m = cache_1h = 0
    if breakpoint_total >= ANTHROPIC_CACHE_MIN_TOKENS:
        if prefix_digest[0] % 2 == 0:
            cache_1h = breakpoint_1h
            cache_5m = breakpoint_total - breakpoint_1h
        else:
            cache_read = breakpoint_total

    digest = hasher.digest()
    thinking = body.get("thinking")
    thinking_type = thinking.get("type") if isinstance(thinking, dict) else None
    if thinking_type == "enabled":
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise InvalidRequest("thinking.budget_tokens: must be a positive integer", "thinking")
        if budget >= max_tokens:
            raise InvalidRequest(
                "`max_tokens` must be greater than `thinking.budget_tokens`.", "max_tokens"
            )
        reasoning = (
            0 if NO_REASONING_MARKER in model else budget * (25 + _u32(digest, 12) % 51) // 100
        )
    elif thinking_type == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        effort = ANTHROPIC_DEFAULT_ADAPTIVE_EFFORT if effort is None else effort
        if effort not in ANTHROPIC_EFFORTS:
            raise InvalidRequest(
                f"output_config.effort: unsupported value '{effort}'", "output_config"
            )
        reasoning = _effort_reasoning(model, digest, effort)
    elif thinking_type in (None, "disabled", "between_tools"):
        reasoning = 0
    else:
        raise InvalidRequest(f"thinking.type: unsupported value '{thinking_type}'", "thinking")
    return _finish(model, digest, prompt, cache_read, cache_5m, cache_1h, reasoning, max_tokens)


def anthropic_thinking_display(body: Mapping[str, Any]) -> str:
    """ "summarized" (thinking text returned) or "omitted" (only the signature)."""
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("display") == "omitted":
        return "omitted"
    return "summarized"


def _finish(
    model: str,
    digest: bytes,
    prompt: int,
    cached: int,
    cache_5m: int,
    cache_1h: int,
    reasoning: int,
    cap: int | None,
) -> Generation:
    visible = MIN_VISIBLE_TOKENS + _u32(digest, 0) % VISIBLE_TOKENS_SPAN
    truncated = False
    if cap is not None and reasoning + visible > cap:
        reasoning = min(reasoning, cap)
        visible = cap - reasoning
        truncated = True
    return Generation(
        model=model,
        prompt_tokens=prompt,
        cached_tokens=cached,
        cache_write_5m_tokens=cache_5m,
        cache_write_1h_tokens=cache_1h,
        reasoning_tokens=reasoning,
        visible_tokens=visible,
        truncated=truncated,
        visible_start=_u32(digest, 16) % _SEQUENCE_LENGTH,
        reasoning_start=_u32(digest, 20) % _SEQUENCE_LENGTH,
        digest=digest,
    )


def _effort_reasoning(model: str, digest: bytes, effort: str) -> int:
    if effort == "none" or NO_REASONING_MARKER in model:
        return 0
    if effort == "minimal":
        return _u32(digest, 8) % 4
    visible = MIN_VISIBLE_TOKENS + _u32(digest, 0) % VISIBLE_TOKENS_SPAN
    return visible * EFFORT_MULTIPLIERS[effort] * (75 + _u32(digest, 4) % 51) // 100


def _openai_cached(prompt: int) -> int:
    cached = (prompt - 1) // OPENAI_CACHE_GRANULARITY * OPENAI_CACHE_GRANULARITY
    return cached if cached >= OPENAI_CACHE_MIN_TOKENS else 0


def _u32(digest: bytes, offset: int) -> int:
    return int.from_bytes(digest[offset : offset + 4], "big")


def _require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    return model


def _optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"Invalid '{name}': expected an integer >= 1.", name)
    return value


def _start_digest(model: str) -> Any:
    return hashlib.sha256(model.encode("utf-8", "surrogatepass") + b"\x00")


def _tools_tokens(tools: Any) -> int:
    if not isinstance(tools, list):
        return 0
    return sum((len(orjson.dumps(tool)) + 3) // 4 for tool in tools)


def _digest_item(hasher: Any, item: Mapping[str, Any]) -> int:
    """Feed one OpenAI message / Responses input item to the digest; return its text tokens."""
    role = item.get("role") or item.get("type") or ""
    hasher.update(str(role).encode() + b"\x1f")
    tokens = 0
    for text in _openai_item_texts(item):
        hasher.update(text.encode("utf-8", "surrogatepass") + b"\x1e")
        tokens += (len(text) + 3) // 4
    hasher.update(b"\x1d")
    return tokens


def _openai_item_texts(item: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    content = item.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
    for key in ("name", "arguments", "output"):
        value = item.get(key)
        if isinstance(value, str):
            texts.append(value)
    tool_calls = item.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    value = function.get(key)
                    if isinstance(value, str):
                        texts.append(value)
    return texts


def _anthropic_block_texts(block: Mapping[str, Any]) -> list[str]:
    block_type = block.get("type")
    if block_type == "text":
        text = block.get("text")
        return [text] if isinstance(text, str) else []
    if block_type == "thinking":
        text = block.get("thinking")
        return [text] if isinstance(text, str) else []
    if block_type == "tool_use":
        return [str(block.get("name", "")), orjson.dumps(block.get("input")).decode()]
    if block_type == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return [content]
        if isinstance(content, list):
            return [
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
    return []


def _breakpoint(block: Mapping[str, Any], running: int, one_hour: int) -> tuple[int, int]:
    """(tokens through this breakpoint, tokens through the last 1-hour breakpoint)."""
    if block["cache_control"].get("ttl") == "1h":
        one_hour = running
    return running, one_hour
