"""Provider usage → Reckon token classes (metering/usage.py).

The corpus (fixtures/usage_corpus.json) holds whole provider payloads; the helpers below
pick the usage out of them the way a proxy does, so streaming traps (usage on a chunk
with non-empty choices, cumulative Anthropic deltas, vLLM frames) are exercised too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.models import PriceComponent
from metering.models import ServingCostRate
from metering.usage import (
    COST_RATE_FIELDS,
    DERIVED,
    ESTIMATED,
    LEDGER_COLUMNS,
    NONE,
    REPORTED,
    TOKEN_CLASS_LABELS,
    TOKEN_CLASSES,
    TextCounts,
    TokenUsage,
    high_water,
    merge_anthropic_stream_usage,
    usage_from_anthropic,
    usage_from_openai_chat,
    usage_from_openai_responses,
)

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "usage_corpus.json").read_text())
CASES: list[dict[str, Any]] = CORPUS["cases"]
CLASSES = (*LEDGER_COLUMNS, "reasoning_source")


# --- pulling usage out of whole payloads, as the proxy does ----------------------------


def _chat_frames_usage(frames: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    usage: Mapping[str, Any] | None = None
    for frame in frames:  # every chunk, whatever its `choices` holds
        usage = high_water(usage, frame.get("usage"))
    return usage


def _anthropic_stream_usage(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    start = next(e["message"]["usage"] for e in events if e["type"] == "message_start")
    deltas = [e["usage"] for e in events if e["type"] == "message_delta"]
    return merge_anthropic_stream_usage(start, deltas[-1] if deltas else None)


def _responses_usage(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if str(payload.get("type", "")).startswith("response."):  # terminal stream event
        return payload["response"].get("usage")
    return payload.get("usage")


def _parse_case(case: Mapping[str, Any]) -> TokenUsage:
    payload = case["payload"]
    text = TextCounts(**case["text"]) if "text" in case else None
    match case["provider"]:
        case "openai_chat":
            return usage_from_openai_chat(payload.get("usage"), text)
        case "openai_chat_frames":
            return usage_from_openai_chat(_chat_frames_usage(payload), text)
        case "openai_responses":
            return usage_from_openai_responses(_responses_usage(payload), text)
        case "anthropic":
            return usage_from_anthropic(payload.get("usage"), text)
        case "anthropic_stream":
            return usage_from_anthropic(_anthropic_stream_usage(payload), text)
    raise AssertionError(f"unknown provider {case['provider']!r}")


def _classes(usage: TokenUsage) -> dict[str, Any]:
    return {name: getattr(usage, name) for name in CLASSES}


# --- the corpus ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_corpus_case(case: dict[str, Any]) -> None:
    usage = _parse_case(case)
    expected = case["expected"]

    assert _classes(usage) == {name: expected[name] for name in CLASSES}
    if expected["flags"]:
        for flag in expected["flags"]:
            assert flag in usage.flags
    else:
        assert usage.flags == []


def test_corpus_covers_every_provider_shape_and_names_are_unique() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert {case["provider"] for case in CASES} == {
        "openai_chat",
        "openai_chat_frames",
        "openai_responses",
        "anthropic",
        "anthropic_stream",
    }
    assert {case["expected"]["reasoning_source"] for case in CASES} == {
        REPORTED,
        ESTIMATED,
        NONE,
    }
    for case in CASES:
        assert set(CLASSES) | {"flags"} <= set(case["expected"]), case["name"]


def test_summing_anthropic_deltas_would_have_overbilled() -> None:
    """Guards the corpus itself: its stream case must tell 'last delta' from 'sum'."""
    case = next(c for c in CASES if c["name"] == "anthropic_stream_cumulative_message_deltas")
    summed = sum(
        e["usage"]["output_tokens"] for e in case["payload"] if e["type"] == "message_delta"
    )
    assert summed != _parse_case(case).total_output_tokens == 913


# --- estimation from text ------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reasoning_chars", "visible_chars", "reasoning"),
    [
        (5, 1, 1, 3),  # 2.5 rounds half up
        (7, 1, 1, 4),  # 3.5 rounds half up
        (1, 1, 1, 1),  # 0.5 rounds half up
        (1, 1, 3, 0),  # 0.25 rounds down
        (3, 1, 2, 1),  # exactly 1
        (10, 1, 2, 3),  # 3.33 rounds down
        (10, 2, 1, 7),  # 6.67 rounds up
        (40, 78, 21, 32),  # 31.52 rounds up
        (100, 5, 0, 100),  # no visible text: all reasoning
        (0, 5, 5, 0),  # nothing to split
        (10**12 + 1, 1, 1, 5 * 10**11 + 1),  # exact integer arithmetic, no float drift
    ],
)
def test_estimated_split_rounds_half_up_and_sums_to_completion(
    completion: int, reasoning_chars: int, visible_chars: int, reasoning: int
) -> None:
    text = TextCounts(reasoning_chars=reasoning_chars, visible_chars=visible_chars)
    usage_dict = {"prompt_tokens": 7, "completion_tokens": completion}

    chat = usage_from_openai_chat(usage_dict, text)
    anthropic = usage_from_anthropic({"input_tokens": 7, "output_tokens": completion}, text)

    for usage in (chat, anthropic):
        assert (usage.reasoning_tokens, usage.output_tokens) == (reasoning, completion - reasoning)
        assert usage.reasoning_source == ESTIMATED
        assert usage.flags == []


def test_no_reasoning_text_means_no_reasoning() -> None:
    usage = usage_from_openai_chat(
        {"prompt_tokens": 3, "completion_tokens": 9},
        TextCounts(reasoning_chars=0, visible_chars=40),
    )
    assert (usage.output_tokens, usage.reasoning_tokens, usage.reasoning_source) == (9, 0, NONE)


def test_reported_count_wins_over_text_even_when_zero() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 3,
            "completion_tokens": 9,
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        TextCounts(reasoning_chars=500, visible_chars=10),
    )
    assert (usage.output_tokens, usage.reasoning_tokens, usage.reasoning_source) == (9, 0, REPORTED)


def test_invalid_text_counts_are_flagged_not_used() -> None:
    usage = usage_from_anthropic(
        {"input_tokens": 1, "output_tokens": 10}, TextCounts(reasoning_chars=-5, visible_chars=3)
    )
    assert (usage.output_tokens, usage.reasoning_tokens, usage.reasoning_source) == (10, 0, NONE)
    assert usage.flags == ["invalid_text_counts"]


# --- high_water ------------------------------------------------------------------------


def test_high_water_takes_the_later_usage_when_it_grew_or_stayed() -> None:
    earlier = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
    later = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
    same_total = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35, "x": 1}

    assert high_water(earlier, later) is later
    assert high_water(earlier, same_total) is same_total


def test_high_water_keeps_previous_when_later_total_is_smaller() -> None:
    bigger = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
    smaller = {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}

    assert high_water(bigger, smaller) is bigger


def test_high_water_handles_missing_frames() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}

    assert high_water(None, None) is None
    assert high_water(None, usage) is usage
    assert high_water(usage, None) is usage


def test_high_water_without_total_field_compares_summed_counts() -> None:
    earlier = {"input_tokens": 10, "output_tokens": 50}
    later = {"input_tokens": 10, "output_tokens": 40}
    gemini_earlier = {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13}
    gemini_later = {"promptTokenCount": 10, "candidatesTokenCount": 8, "totalTokenCount": 18}

    assert high_water(earlier, later) is earlier
    assert high_water(gemini_earlier, gemini_later) is gemini_later


def test_high_water_fold_over_frames_ends_at_the_maximum() -> None:
    frames = [
        {"prompt_tokens": 30, "completion_tokens": c, "total_tokens": 30 + c} for c in (1, 4, 3, 9)
    ]
    result = None
    for frame in frames:
        result = high_water(result, frame)
    assert result is frames[-1]
    assert usage_from_openai_chat(result).output_tokens == 9


# --- merge_anthropic_stream_usage ----------------------------------------------------


def test_merge_takes_start_input_and_last_delta_output_without_summing() -> None:
    start = {
        "input_tokens": 472,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 8192,
        "output_tokens": 2,
    }
    last_delta = {"output_tokens": 913, "output_tokens_details": {"thinking_tokens": 688}}

    merged = merge_anthropic_stream_usage(start, last_delta)

    assert merged == {
        "input_tokens": 472,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 8192,
        "output_tokens": 913,
        "output_tokens_details": {"thinking_tokens": 688},
    }


def test_merge_lets_delta_values_override_but_not_its_nulls() -> None:
    start = {"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 1}
    last_delta = {"input_tokens": 12, "cache_read_input_tokens": None, "output_tokens": 40}

    merged = merge_anthropic_stream_usage(start, last_delta)

    assert merged == {"input_tokens": 12, "cache_read_input_tokens": 0, "output_tokens": 40}


def test_merge_does_not_mutate_inputs_and_handles_none() -> None:
    start = {"input_tokens": 10, "output_tokens": 1}
    delta = {"output_tokens": 5}

    merge_anthropic_stream_usage(start, delta)

    assert start == {"input_tokens": 10, "output_tokens": 1}
    assert delta == {"output_tokens": 5}
    assert merge_anthropic_stream_usage(None, None) == {}
    assert merge_anthropic_stream_usage(start, None) == start
    assert merge_anthropic_stream_usage(None, delta) == delta


# --- invalid and missing input ------------------------------------------------------


@pytest.mark.parametrize("bad", [True, False, 1.0, 12.5, "7", -1, [3], {"n": 3}])
def test_invalid_count_is_zero_and_flagged(bad: Any) -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": bad,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
    )
    assert usage.input_tokens == 0
    assert usage.output_tokens == 4
    assert usage.flags == ["invalid_count:prompt_tokens"]


def test_nested_object_of_wrong_type_is_flagged() -> None:
    usage = usage_from_openai_chat(
        {"prompt_tokens": 5, "completion_tokens": 4, "prompt_tokens_details": [1, 2]}
    )
    assert (usage.input_tokens, usage.cached_input_tokens) == (5, 0)
    assert "invalid_object:prompt_tokens_details" in usage.flags


@pytest.mark.parametrize("missing", [None, {}, [], "usage"])
def test_missing_usage_is_zero_and_flagged(missing: Any) -> None:
    parsed = [
        usage_from_openai_chat(missing),
        usage_from_openai_responses(missing),
        usage_from_anthropic(missing),
    ]
    for usage in parsed:
        assert usage.total_tokens == 0
        assert usage.reasoning_source == NONE
        assert usage.flags == ["missing_usage"]


def test_missing_required_count_is_flagged() -> None:
    usage = usage_from_openai_chat({"completion_tokens": 5})
    assert usage.output_tokens == 5
    assert usage.flags == ["missing_count:prompt_tokens"]


def test_deepseek_hit_disagreeing_with_cached_tokens_bills_hit_and_flags() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 100,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 64},
            "prompt_cache_hit_tokens": 80,
            "prompt_cache_miss_tokens": 20,
        }
    )
    assert (usage.input_tokens, usage.cached_input_tokens) == (20, 80)
    assert usage.flags == ["cache_read_mismatch"]


def test_sglang_and_standard_reasoning_disagreeing_uses_standard_and_flags() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 1,
            "completion_tokens": 100,
            "completion_tokens_details": {"reasoning_tokens": 70},
            "reasoning_tokens": 75,
        }
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (30, 70)
    assert usage.flags == ["reasoning_count_mismatch"]


def test_cache_reads_and_writes_exceeding_prompt_cap_reads_first() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 100,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 70, "cache_write_tokens": 50},
        }
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (0, 70, 30)
    assert usage.flags == ["cached_exceeds_prompt"]


def test_token_usage_totals() -> None:
    usage = TokenUsage(
        input_tokens=1,
        cached_input_tokens=20,
        cache_write_tokens=300,
        output_tokens=4000,
        reasoning_tokens=50000,
    )
    assert usage.total_input_tokens == 321
    assert usage.total_output_tokens == 54000
    assert usage.total_tokens == 54321
    assert TokenUsage().flags == [] and TokenUsage().flags is not TokenUsage().flags


def test_every_naming_of_the_token_classes_derives_from_one_list() -> None:
    assert tuple(TOKEN_CLASS_LABELS) == tuple(COST_RATE_FIELDS) == TOKEN_CLASSES
    assert COST_RATE_FIELDS["cache_read"] == "cache_read_usd"
    rate_columns = {field.name for field in ServingCostRate._meta.get_fields()}
    assert set(COST_RATE_FIELDS.values()) <= rate_columns
    assert PriceComponent.TokenClass.choices == [
        ("input", "Uncached input"),
        ("cache_read", "Cache read"),
        ("cache_write", "Cache write"),
        ("output", "Visible output"),
        ("reasoning", "Reasoning"),
    ]


# --- properties ----------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=10**12)
text_counts = st.none() | st.builds(
    TextCounts,
    reasoning_chars=st.integers(min_value=0, max_value=10**7),
    visible_chars=st.integers(min_value=0, max_value=10**7),
)


def _assert_non_negative_ints(usage: TokenUsage) -> None:
    for name in CLASSES[:-1]:
        value = getattr(usage, name)
        assert type(value) is int and value >= 0, (name, value)
    assert usage.reasoning_source in {REPORTED, DERIVED, ESTIMATED, NONE}


@given(
    uncached=counts,
    cached=counts,
    cache_write=counts,
    visible=counts,
    reasoning=counts,
    reasoning_reported=st.booleans(),
    text=text_counts,
)
def test_openai_chat_classes_partition_prompt_and_completion(
    uncached: int,
    cached: int,
    cache_write: int,
    visible: int,
    reasoning: int,
    reasoning_reported: bool,
    text: TextCounts | None,
) -> None:
    prompt, completion = uncached + cached + cache_write, visible + reasoning
    raw: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
    }
    if reasoning_reported:
        raw["completion_tokens_details"] = {"reasoning_tokens": reasoning}

    usage = usage_from_openai_chat(raw, text)

    assert usage.flags == []
    _assert_non_negative_ints(usage)
    assert usage.output_tokens + usage.reasoning_tokens == completion
    assert usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens == prompt
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        uncached,
        cached,
        cache_write,
    )
    if reasoning_reported:
        assert (usage.output_tokens, usage.reasoning_tokens) == (visible, reasoning)


@given(
    uncached=counts,
    cache_read=counts,
    cache_write=counts,
    visible=counts,
    thinking=counts,
    thinking_reported=st.booleans(),
    text=text_counts,
)
def test_anthropic_cache_counts_are_additive_and_thinking_inside_output(
    uncached: int,
    cache_read: int,
    cache_write: int,
    visible: int,
    thinking: int,
    thinking_reported: bool,
    text: TextCounts | None,
) -> None:
    output = visible + thinking
    raw: dict[str, Any] = {
        "input_tokens": uncached,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output,
    }
    if thinking_reported:
        raw["output_tokens_details"] = {"thinking_tokens": thinking}

    usage = usage_from_anthropic(raw, text)

    assert usage.flags == []
    _assert_non_negative_ints(usage)
    assert usage.total_input_tokens == uncached + cache_read + cache_write
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        uncached,
        cache_read,
        cache_write,
    )
    assert usage.output_tokens + usage.reasoning_tokens == output
    if thinking_reported:
        assert (usage.output_tokens, usage.reasoning_tokens) == (visible, thinking)


@given(uncached=counts, cached=counts, visible=counts, reasoning=counts)
def test_openai_responses_classes_partition_input_and_output(
    uncached: int, cached: int, visible: int, reasoning: int
) -> None:
    usage = usage_from_openai_responses(
        {
            "input_tokens": uncached + cached,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": visible + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": uncached + cached + visible + reasoning,
        }
    )
    assert usage.flags == []
    assert _classes(usage) == {
        "input_tokens": uncached,
        "cached_input_tokens": cached,
        "cache_write_tokens": 0,
        "output_tokens": visible,
        "reasoning_tokens": reasoning,
        "reasoning_source": REPORTED,
    }


_FIELD_NAMES = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "cache_write_tokens",
        "completion_tokens_details",
        "reasoning_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "thinking_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
    ]
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_FIELD_NAMES | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=20,
)
_usage_like = st.dictionaries(_FIELD_NAMES, _json_values, max_size=10) | _json_values


@given(first=_usage_like, second=_usage_like, text=text_counts)
def test_any_payload_parses_to_non_negative_counts_without_raising(
    first: Any, second: Any, text: TextCounts | None
) -> None:
    merged = merge_anthropic_stream_usage(
        first if isinstance(first, Mapping) else None,
        second if isinstance(second, Mapping) else None,
    )
    picked = high_water(
        first if isinstance(first, Mapping) else None,
        second if isinstance(second, Mapping) else None,
    )
    for usage in (
        usage_from_openai_chat(first, text),
        usage_from_openai_responses(first, text),
        usage_from_anthropic(first, text),
        usage_from_anthropic(merged, text),
        usage_from_openai_chat(picked, text),
    ):
        _assert_non_negative_ints(usage)
        assert all(isinstance(flag, str) for flag in usage.flags)
