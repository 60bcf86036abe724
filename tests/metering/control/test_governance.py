import pytest

from metering.control.governance import (
    ReasoningRules,
    apply_reasoning_rules,
    request_effort,
    requested_max_output,
    set_max_output,
)


def rules(efforts=(), default=None, cap=None, refuse=False) -> ReasoningRules:  # type: ignore[no-untyped-def]
    return ReasoningRules(frozenset(efforts), default, cap, refuse)


@pytest.mark.parametrize(
    ("endpoint", "request_body", "policy", "expected"),
    [
        (
            "chat.completions",
            {"reasoning_effort": "high"},
            rules(["minimal", "low"]),
            {"reasoning_effort": "low"},
        ),
        (
            "chat.completions",
            {"reasoning_effort": "minimal"},
            rules(["low", "medium"]),
            {"reasoning_effort": "low"},
        ),
        ("chat.completions", {}, rules(default=500), {"max_completion_tokens": 500}),
        ("chat.completions", {"max_tokens": 9000}, rules(cap=1000), {"max_tokens": 1000}),
        (
            "chat.completions",
            {"max_completion_tokens": 10},
            rules(cap=1000),
            {"max_completion_tokens": 10},
        ),
        (
            "responses",
            {"reasoning": {"effort": "high", "summary": "auto"}},
            rules(["low"]),
            {"reasoning": {"effort": "low", "summary": "auto"}},
        ),
        ("responses", {}, rules(cap=300), {"max_output_tokens": 300}),
        (
            "messages",
            {"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 3000}},
            rules(cap=2000),
            {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1999}},
        ),
    ],
)
def test_clamp(endpoint: str, request_body: dict, policy: ReasoningRules, expected: dict) -> None:  # type: ignore[type-arg]
    assert apply_reasoning_rules(endpoint, request_body, policy) is None
    assert request_body == expected


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"reasoning_effort": "high"}, "not allowed"),
        ({"max_completion_tokens": 5000}, "at most 1000"),
        ({}, "at most 1000"),
    ],
)
def test_refuse(request_body: dict, fragment: str) -> None:  # type: ignore[type-arg]
    reason = apply_reasoning_rules(
        "chat.completions", request_body, rules(["low"], cap=1000, refuse=True)
    )
    assert reason is not None and fragment in reason


def test_requested_max_output_ignores_nonsense() -> None:
    assert requested_max_output("chat.completions", {"max_completion_tokens": True}) is None
    assert requested_max_output("chat.completions", {"max_completion_tokens": -5}) is None
    assert requested_max_output("messages", {"max_tokens": 64}) == 64


def test_a_small_grant_disables_thinking_rather_than_break_anthropics_minimum() -> None:

    request = {"max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 6000}}
    set_max_output("messages", request, 3000)
    assert request == {"max_tokens": 3000, "thinking": {"type": "enabled", "budget_tokens": 2999}}
    set_max_output("messages", request, 900)
    assert request == {"max_tokens": 900, "thinking": {"type": "disabled"}}


@pytest.mark.parametrize(
    ("endpoint", "request_body", "expected"),
    [
        ("chat.completions", {"reasoning_effort": "low"}, "low"),
        ("chat.completions", {"reasoning": {"effort": "high"}}, ""),  # not chat's field
        ("chat.completions", {}, ""),
        ("chat.completions", {"reasoning_effort": 3}, ""),
        ("responses", {"reasoning": {"effort": "minimal"}}, "minimal"),
        ("responses", {"reasoning": "high"}, ""),
        ("responses", {"reasoning_effort": "high"}, ""),
        ("messages", {"output_config": {"effort": "medium"}}, "medium"),
        ("messages", {"thinking": {"type": "enabled", "budget_tokens": 4096}}, ""),
        ("messages", {"reasoning_effort": "high"}, ""),
        ("messages", {"output_config": None}, ""),
    ],
)
def test_request_effort(endpoint: str, request_body: dict, expected: str) -> None:  # type: ignore[type-arg]
    assert request_effort(endpoint, request_body) == expected


def test_request_effort_reads_the_effort_after_governance_lowered_it() -> None:
    request = {"reasoning_effort": "high"}
    assert apply_reasoning_rules("chat.completions", request, rules(efforts=("low",))) is None
    assert request_effort("chat.completions", request) == "low"
