"""An `effort` alias's rules: parsed and validated from the alias's JSON (pure, no I/O).

The stored form is a list of objects, tried in order, first match wins:
`{"name": "light", "efforts": ["minimal", "low"], "max_input_tokens": 2000,
"target": "mini"}`. `efforts` (omitted or empty: any effort) and `max_input_tokens`
(omitted: any size) are optional; a request with no effort has effort "" (also written
"none"). Whether `target` names one of the alias's targets is checked by the service that
stores the rules (`metering.services.alias_set`), which knows the targets.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The efforts a rule may name: the providers' levels, plus "" / "none" for no effort.
RULE_EFFORTS = frozenset({"minimal", "low", "medium", "high", "xhigh", "none", ""})
RULE_KEYS = frozenset({"name", "efforts", "max_input_tokens", "target"})
NAME_MAX_LENGTH = 100  # Route.name's length
MAX_RULES = 32


@dataclass(frozen=True, slots=True)
class EffortRule:
    name: str
    efforts: frozenset[str]  # empty = any effort ("" stands for "no effort")
    max_input_tokens: int | None  # None = any size
    target: str  # Route.name

    def matches(self, effort: str, input_tokens: int) -> bool:
        return (not self.efforts or effort in self.efforts) and (
            self.max_input_tokens is None or input_tokens <= self.max_input_tokens
        )


def parse_rules(raw: Any) -> tuple[EffortRule, ...]:
    """The rules in `raw` (the alias's JSON), or ValueError naming the first fault."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError("Rules must be a JSON list of objects.")
    if len(raw) > MAX_RULES:
        raise ValueError(f"At most {MAX_RULES} rules.")
    rules = []
    names: set[str] = set()
    for position, item in enumerate(raw, start=1):
        rule = _parse_rule(item, position)
        if rule.name in names:
            raise ValueError(f"Rule {position}: the name {rule.name!r} is used twice.")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def rules_unknown_targets(rules: Iterable[EffortRule], targets: Iterable[str]) -> list[str]:
    """The rule targets that are not among `targets`, sorted (empty: all known)."""
    known = set(targets)
    return sorted({rule.target for rule in rules} - known)


def rules_as_json(rules: Iterable[EffortRule]) -> list[dict[str, Any]]:
    """The stored form of parsed rules (normalized: "none" is written "")."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        item: dict[str, Any] = {"name": rule.name}
        if rule.efforts:
            item["efforts"] = sorted(rule.efforts)
        if rule.max_input_tokens is not None:
            item["max_input_tokens"] = rule.max_input_tokens
        item["target"] = rule.target
        out.append(item)
    return out


def _parse_rule(item: Any, position: int) -> EffortRule:
    where = f"Rule {position}"
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be an object with name and target.")
    unknown = sorted(set(item) - RULE_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(RULE_KEYS))})."
        )
    name = _text(item.get("name"), f"{where}: name")
    where = f"Rule {name!r}"
    target = _text(item.get("target"), f"{where}: target")
    efforts_raw = item.get("efforts", [])
    if efforts_raw is None:
        efforts_raw = []
    if not isinstance(efforts_raw, list) or not all(isinstance(e, str) for e in efforts_raw):
        raise ValueError(f"{where}: efforts must be a list of strings.")
    bad = sorted({e for e in efforts_raw if e.strip().lower() not in RULE_EFFORTS})
    if bad:
        raise ValueError(
            f"{where}: unknown effort(s) {', '.join(map(repr, bad))} (allowed: "
            f'{", ".join(sorted(e for e in RULE_EFFORTS if e))}, or "" for none).'
        )
    efforts = frozenset(
        "" if e.strip().lower() == "none" else e.strip().lower() for e in efforts_raw
    )
    max_input = item.get("max_input_tokens")
    if max_input is not None and (
        isinstance(max_input, bool) or not isinstance(max_input, int) or max_input < 1
    ):
        raise ValueError(f"{where}: max_input_tokens must be a positive integer.")
    return EffortRule(name=name, efforts=efforts, max_input_tokens=max_input, target=target)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string.")
    value = value.strip()
    if len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"{what} is longer than {NAME_MAX_LENGTH} characters.")
    return value
