"""Turn a provider's usage object into Reckon's disjoint token classes.

Pure functions: no Django, no I/O, never raise on provider data. The providers'
documented usage objects say which counts nest inside which: OpenAI (Chat Completions,
Responses) counts cached tokens inside the input and reasoning inside the output tokens;
Anthropic counts cache reads and writes beside `input_tokens`, thinking inside
`output_tokens`. Each parser below states its provider's rule.

Invariants of every `TokenUsage` returned here:
- each count is a non-negative `int`;
- the classes are disjoint and additive: uncached input + cache read + cache write is the
  provider's total input, visible output + reasoning is its total output;
- any provider invariant the usage broke is named in `flags` (the record is then kept for
  review and excluded from rating); a broken record never yields a count larger than the
  provider's own total for that side.

Choices where the reference is silent:
- A subset count larger than its total (reasoning > completion, cached > prompt) is capped
  at the total: the provider's total is trusted, the subset is not. So reasoning >
  completion bills output 0 and reasoning = completion; cached > prompt bills input 0 and
  cache read (then cache write) capped to what is left of the prompt.
- An invalid count (bool, float, string, negative, ...) counts as 0 and is flagged
  `invalid_count:<dotted.path>`; a nested object of the wrong type is ignored and flagged
  `invalid_object:<dotted.path>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

# reasoning_source values (mirrors UsageRecord.ReasoningSource).
REPORTED = "reported"  # the provider gave the reasoning count
# Arithmetic on the provider's totals: no parser derives any more (the Gemini one went);
# kept because stored records may carry it.
DERIVED = "derived"
ESTIMATED = "estimated"  # split from the text we saw
NONE = "none"  # no reasoning count and no reasoning text

MAX_COUNT = 2**53

# Flags (stored on the usage record; any flag holds the record back from rating).
MISSING_USAGE = "missing_usage"
REASONING_EXCEEDS_OUTPUT = "reasoning_exceeds_output"
CACHED_EXCEEDS_PROMPT = "cached_exceeds_prompt"
CACHE_HIT_MISS_MISMATCH = "cache_hit_miss_mismatch"
CACHE_READ_MISMATCH = "cache_read_mismatch"
REASONING_COUNT_MISMATCH = "reasoning_count_mismatch"
CACHE_CREATION_BREAKDOWN_MISMATCH = "cache_creation_breakdown_mismatch"
TOTAL_MISMATCH = "total_mismatch"
INVALID_TEXT_COUNTS = "invalid_text_counts"


# The five token classes, one home: the names pricing, spend rates and cost rates use
# (in this order everywhere), and the TokenUsage field / ledger column holding each.
TOKEN_CLASSES: tuple[str, ...] = ("input", "cache_read", "cache_write", "output", "reasoning")
LEDGER_FIELDS: dict[str, str] = {
    "input": "input_tokens",  # uncached input
    "cache_read": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "output": "output_tokens",  # visible output only
    "reasoning": "reasoning_tokens",  # hidden reasoning / thinking
}
# The ledger's columns (UsageRecord, UsageRollup), in the same order, and back to the name.
LEDGER_COLUMNS: tuple[str, ...] = tuple(LEDGER_FIELDS.values())
PRICING_CLASS: dict[str, str] = {column: name for name, column in LEDGER_FIELDS.items()}
# The ServingCostRate column holding each class's serving cost (USD per 1M tokens).
COST_RATE_FIELDS: dict[str, str] = {name: f"{name}_usd" for name in TOKEN_CLASSES}
# How people read each class (billing.models PriceComponent.TokenClass labels).
TOKEN_CLASS_LABELS: dict[str, str] = {
    "input": "Uncached input",
    "cache_read": "Cache read",
    "cache_write": "Cache write",
    "output": "Visible output",
    "reasoning": "Reasoning",
}


@dataclass(slots=True)
class TextCounts:
    """Characters of text seen in a response, used only to estimate reasoning when the provider gives no count."""

    reasoning_chars: int = 0
    visible_chars: int = 0


@dataclass(slots=True)
class TokenUsage:
    input_tokens: int = 0  # uncached input only
    cached_input_tokens: int = 0  # cache reads
    cache_write_tokens: int = 0  # cache writes
    output_tokens: int = 0  # VISIBLE output only (reasoning excluded)
    reasoning_tokens: int = 0  # hidden reasoning / thinking tokens
    reasoning_source: str = NONE  # reported | derived | estimated | none
    flags: list[str] = field(default_factory=list)  # invariant violations / anomalies

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_output_tokens(self) -> int:
        return self.output_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.total_output_tokens

    def by_class(self) -> dict[str, int]:
        """The counts keyed by token class (``TOKEN_CLASSES`` order)."""
        return dict(zip(TOKEN_CLASSES, ledger_counts(self), strict=True))


# A usage's five counts in LEDGER_COLUMNS (= TOKEN_CLASSES) order. Built once, in C: the
# hot path reads them per call.
ledger_counts: Callable[[TokenUsage], tuple[int, ...]] = attrgetter(*LEDGER_COLUMNS)


# --- reading counts -------------------------------------------------------------------


def _flag(flags: list[str], name: str) -> None:
    if name not in flags:
        flags.append(name)


_PATHS: dict[str, tuple[str, ...]] = {}


def _count(usage: Mapping[str, Any], path: str, flags: list[str]) -> int | None:
    """The count at dotted `path`, None when absent or null, 0 (flagged) when invalid."""
    parts = _PATHS.get(path)
    if parts is None:
        parts = _PATHS[path] = tuple(path.split("."))
    node: Any = usage
    if type(usage) is dict and len(parts) == 1:  # a top-level count of a dict: most reads
        node = usage.get(path)
    else:
        for depth, key in enumerate(parts):
            if type(node) is not dict:  # dict: the fast path
                if node is None:
                    return None
                if not isinstance(node, Mapping):
                    _flag(flags, "invalid_object:" + ".".join(parts[:depth]))
                    return None
            node = node.get(key)
    if node is None:
        return None
    # bool is an int subclass; True is not a token count. Beyond 2^53 no provider is
    # telling the truth (and beyond 2^63 the ledger could not store it).
    if type(node) is not int or node < 0 or node > MAX_COUNT:
        _flag(flags, f"invalid_count:{path}")
        return 0
    return node


def _required(usage: Mapping[str, Any], path: str, flags: list[str]) -> int:
    value = _count(usage, path, flags)
    if value is None:
        _flag(flags, f"missing_count:{path}")
        return 0
    return value


def _missing(flags: list[str]) -> TokenUsage:
    _flag(flags, MISSING_USAGE)
    return TokenUsage(flags=flags)


def _check_total(usage: Mapping[str, Any], path: str, expected: int, flags: list[str]) -> None:
    total = _count(usage, path, flags)
    if total is not None and total != expected:
        _flag(flags, TOTAL_MISMATCH)


# --- splitting totals into classes ----------------------------------------------------


def _split_input(
    total: int, cache_read: int, cache_write: int, flags: list[str]
) -> tuple[int, int, int]:
    """(uncached, cache read, cache write) when both cache counts are subsets of `total`."""
    if cache_read + cache_write > total:
        _flag(flags, CACHED_EXCEEDS_PROMPT)
        cache_read = min(cache_read, total)
        cache_write = min(cache_write, total - cache_read)
    return total - cache_read - cache_write, cache_read, cache_write


def _estimate_reasoning(total_output: int, text: TextCounts) -> int:
    """Reasoning share of `total_output` in proportion to reasoning characters, half up."""
    chars = text.reasoning_chars + text.visible_chars
    if total_output <= 0 or text.reasoning_chars <= 0 or chars <= 0:
        return 0
    # floor(total * r / chars + 1/2) in integers.
    return (2 * total_output * text.reasoning_chars + chars) // (2 * chars)


def _valid_text(text: TextCounts | None, flags: list[str]) -> TextCounts | None:
    if text is None:
        return None
    reasoning, visible = text.reasoning_chars, text.visible_chars
    if type(reasoning) is not int or type(visible) is not int or reasoning < 0 or visible < 0:
        _flag(flags, INVALID_TEXT_COUNTS)
        return None
    return text


def _split_output(
    total: int, reasoning: int | None, text: TextCounts | None, flags: list[str]
) -> tuple[int, int, str]:
    """(visible, reasoning, source) when reasoning is a subset of `total`."""
    if reasoning is not None:
        if reasoning > total:
            _flag(flags, REASONING_EXCEEDS_OUTPUT)
            return 0, total, REPORTED
        return total - reasoning, reasoning, REPORTED
    text = _valid_text(text, flags)
    if text is not None and text.reasoning_chars > 0:
        estimated = _estimate_reasoning(total, text)
        return total - estimated, estimated, ESTIMATED
    return total, 0, NONE


# --- providers ------------------------------------------------------------------------


def _openai_chat_cache_read(usage: Mapping[str, Any], prompt: int, flags: list[str]) -> int:
    """Cache reads: OpenAI's cached_tokens, or DeepSeek's prompt_cache_hit_tokens."""
    cached = _count(usage, "prompt_tokens_details.cached_tokens", flags)
    hit = _count(usage, "prompt_cache_hit_tokens", flags)
    miss = _count(usage, "prompt_cache_miss_tokens", flags)
    if hit is not None and miss is not None and hit + miss != prompt:
        _flag(flags, CACHE_HIT_MISS_MISMATCH)
    if hit is None:
        return cached or 0
    if cached is not None and cached != hit:
        _flag(flags, CACHE_READ_MISMATCH)
    return hit  # DeepSeek bills on its own hit count


def _openai_chat_reasoning(usage: Mapping[str, Any], flags: list[str]) -> int | None:
    """Standard completion_tokens_details.reasoning_tokens, or SGLang's top-level field."""
    standard = _count(usage, "completion_tokens_details.reasoning_tokens", flags)
    sglang = _count(usage, "reasoning_tokens", flags)
    if standard is not None and sglang is not None and standard != sglang:
        _flag(flags, REASONING_COUNT_MISMATCH)
    return standard if standard is not None else sglang


def usage_from_openai_chat(
    usage: Mapping[str, Any] | None, text: TextCounts | None = None
) -> TokenUsage:
    """OpenAI Chat Completions and compatible servers (DeepSeek, vLLM, SGLang, llama.cpp)."""
    flags: list[str] = []
    if not isinstance(usage, Mapping) or not usage:
        return _missing(flags)
    prompt = _required(usage, "prompt_tokens", flags)
    completion = _required(usage, "completion_tokens", flags)
    cache_read = _openai_chat_cache_read(usage, prompt, flags)
    cache_write = _count(usage, "prompt_tokens_details.cache_write_tokens", flags) or 0
    uncached, cache_read, cache_write = _split_input(prompt, cache_read, cache_write, flags)
    reasoning = _openai_chat_reasoning(usage, flags)
    visible, reasoning_tokens, source = _split_output(completion, reasoning, text, flags)
    _check_total(usage, "total_tokens", prompt + completion, flags)
    return TokenUsage(uncached, cache_read, cache_write, visible, reasoning_tokens, source, flags)


def usage_from_openai_responses(
    usage: Mapping[str, Any] | None, text: TextCounts | None = None
) -> TokenUsage:
    """OpenAI Responses API: `response.usage` of a response or its terminal stream event."""
    flags: list[str] = []
    if not isinstance(usage, Mapping) or not usage:
        return _missing(flags)
    total_input = _required(usage, "input_tokens", flags)
    total_output = _required(usage, "output_tokens", flags)
    cache_read = _count(usage, "input_tokens_details.cached_tokens", flags) or 0
    uncached, cache_read, _ = _split_input(total_input, cache_read, 0, flags)
    reasoning = _count(usage, "output_tokens_details.reasoning_tokens", flags)
    visible, reasoning_tokens, source = _split_output(total_output, reasoning, text, flags)
    _check_total(usage, "total_tokens", total_input + total_output, flags)
    return TokenUsage(uncached, cache_read, 0, visible, reasoning_tokens, source, flags)


def _check_cache_creation_breakdown(
    usage: Mapping[str, Any], cache_write: int | None, flags: list[str]
) -> None:
    five_minutes = _count(usage, "cache_creation.ephemeral_5m_input_tokens", flags)
    one_hour = _count(usage, "cache_creation.ephemeral_1h_input_tokens", flags)
    if five_minutes is None and one_hour is None:
        return
    if (five_minutes or 0) + (one_hour or 0) != (cache_write or 0):
        _flag(flags, CACHE_CREATION_BREAKDOWN_MISMATCH)


def usage_from_anthropic(
    usage: Mapping[str, Any] | None, text: TextCounts | None = None
) -> TokenUsage:
    """Anthropic Messages. Cache counts are additive to input_tokens, not inside it."""
    flags: list[str] = []
    if not isinstance(usage, Mapping) or not usage:
        return _missing(flags)
    uncached = _required(usage, "input_tokens", flags)
    cache_read = _count(usage, "cache_read_input_tokens", flags)
    cache_write = _count(usage, "cache_creation_input_tokens", flags)
    _check_cache_creation_breakdown(usage, cache_write, flags)
    total_output = _required(usage, "output_tokens", flags)
    thinking = _count(usage, "output_tokens_details.thinking_tokens", flags)
    visible, reasoning_tokens, source = _split_output(total_output, thinking, text, flags)
    return TokenUsage(
        uncached, cache_read or 0, cache_write or 0, visible, reasoning_tokens, source, flags
    )


# --- streams --------------------------------------------------------------------------


def merge_anthropic_stream_usage(
    start_usage: Mapping[str, Any] | None, last_delta_usage: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One Anthropic usage dict from `message_start.message.usage` and the LAST
    `message_delta.usage`. Delta usage is cumulative: its non-null values replace the
    start's (whole nested objects included); nothing is ever summed."""
    merged: dict[str, Any] = dict(start_usage) if isinstance(start_usage, Mapping) else {}
    if isinstance(last_delta_usage, Mapping):
        merged.update((key, value) for key, value in last_delta_usage.items() if value is not None)
    return merged


_EXPLICIT_TOTALS = ("total_tokens", "totalTokenCount")
_SUMMABLE_COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "promptTokenCount",
    "toolUsePromptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
)


def _frame_total(usage: Mapping[str, Any]) -> int:
    ignored: list[str] = []  # validity is judged when the winning frame is parsed
    for key in _EXPLICIT_TOTALS:
        total = _count(usage, key, ignored)
        if total is not None:
            return total
    return sum(_count(usage, key, ignored) or 0 for key in _SUMMABLE_COUNTS)


def high_water(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """For servers that send cumulative usage on every frame: the later usage, unless its
    total is smaller than the previous one (then the previous is kept; not an error)."""
    if not isinstance(current, Mapping):
        return previous
    if not isinstance(previous, Mapping):
        return current
    return previous if _frame_total(current) < _frame_total(previous) else current
