"""Reasoning governance: the efforts a key may ask for and how many output tokens (which
include reasoning) one call may spend. Pure: rewrites the request dict in place (clamp) or
returns the reason to refuse.

Where each provider puts the knobs (the providers' published request formats):
- chat completions: `reasoning_effort`, `max_completion_tokens` (legacy `max_tokens`);
- responses: `reasoning.effort`, `max_output_tokens`;
- messages: `max_tokens` (required, includes thinking), `thinking.budget_tokens`,
  `output_config.effort`.
"""

from dataclasses import dataclass
from typing import Any

EFFORTS = ("minimal", "low", "medium", "high")
ANTHROPIC_MIN_THINKING = 1024  # the smallest thinking.budget_tokens Anthropic accepts


@dataclass(frozen=True, slots=True)
class ReasoningRules:
    allowed_efforts: frozenset[str]  # empty: any
    default_max_output_tokens: int | None
    max_output_tokens: int | None
    refuse: bool  # refuse instead of clamping
    scope: str = "for this key"  # how errors name whose rules these are

    @property
    def is_empty(self) -> bool:
        return (
            not self.allowed_efforts
            and self.default_max_output_tokens is None
            and self.max_output_tokens is None
        )


def _max_field(endpoint: str, request: dict[str, Any]) -> str:
    if endpoint == "chat.completions":
        return (
            "max_tokens"
            if "max_tokens" in request and "max_completion_tokens" not in request
            else "max_completion_tokens"
        )
    if endpoint == "responses":
        return "max_output_tokens"
    return "max_tokens"


def requested_max_output(endpoint: str, request: dict[str, Any]) -> int | None:
    value = request.get(_max_field(endpoint, request))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _effort(endpoint: str, request: dict[str, Any]) -> str | None:
    if endpoint == "chat.completions":
        value = request.get("reasoning_effort")
    elif endpoint == "responses":
        reasoning = request.get("reasoning")
        value = reasoning.get("effort") if isinstance(reasoning, dict) else None
    else:
        return None
    return value if isinstance(value, str) else None


def request_effort(endpoint: str, request: dict[str, Any]) -> str:
    """The reasoning effort a request asks for ("" when none), as routing rules and the
    usage record see it: read after governance, so it is the effort actually sent.
    Messages' `thinking.budget_tokens` is not mapped to an effort (decision 0117, open
    question 3)."""
    if endpoint == "messages":
        config = request.get("output_config")
        value = config.get("effort") if isinstance(config, dict) else None
    else:
        value = _effort(endpoint, request)
    return value if isinstance(value, str) else ""


def _set_effort(endpoint: str, request: dict[str, Any], effort: str) -> None:
    if endpoint == "chat.completions":
        request["reasoning_effort"] = effort
    else:
        request["reasoning"] = {**(request.get("reasoning") or {}), "effort": effort}


def _allowed_effort(requested: str, allowed: frozenset[str]) -> str:
    """The strongest allowed effort not above the requested one (else the weakest allowed)."""
    rank = EFFORTS.index(requested) if requested in EFFORTS else len(EFFORTS)
    below = [e for e in EFFORTS[: rank + 1] if e in allowed]
    return below[-1] if below else next(e for e in EFFORTS if e in allowed)


def apply_reasoning_rules(
    endpoint: str, request: dict[str, Any], rules: ReasoningRules
) -> str | None:
    """Clamp the request to the rules, or return why it must be refused."""
    effort = _effort(endpoint, request)
    if rules.allowed_efforts and effort is not None and effort not in rules.allowed_efforts:
        if rules.refuse:
            allowed = ", ".join(e for e in EFFORTS if e in rules.allowed_efforts)
            return f"reasoning effort '{effort}' is not allowed {rules.scope} (allowed: {allowed})."
        _set_effort(endpoint, request, _allowed_effort(effort, rules.allowed_efforts))
    name = _max_field(endpoint, request)
    asked = requested_max_output(endpoint, request)
    if asked is None and rules.default_max_output_tokens is not None:
        request[name] = asked = rules.default_max_output_tokens
    cap = rules.max_output_tokens
    if cap is not None and (asked is None or asked > cap):
        if rules.refuse:
            return f"'{name}' must be at most {cap} {rules.scope} (reasoning tokens included)."
        set_max_output(endpoint, request, cap)
    return None


def set_max_output(endpoint: str, request: dict[str, Any], tokens: int) -> None:
    """Set the call's output maximum (reasoning included) to `tokens`, keeping an Anthropic
    thinking budget below it."""
    request[_max_field(endpoint, request)] = tokens
    thinking = request.get("thinking")
    if endpoint == "messages" and isinstance(thinking, dict):
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget >= tokens:
            if tokens - 1 >= ANTHROPIC_MIN_THINKING:
                request["thinking"] = {**thinking, "budget_tokens": tokens - 1}
            else:  # too little left to think at all (Anthropic's minimum budget): answer only
                request["thinking"] = {"type": "disabled"}
