"""What the engine prices: the one rule for which component covers an alias, and the one
mapping between the ledger's token-class names and pricing's."""

from decimal import Decimal

import pytest

from billing.pricing.priced_plan import TOKEN_CLASSES, ComponentPrice, component_covering
from metering.usage import LEDGER_COLUMNS, LEDGER_FIELDS, PRICING_CLASS, TokenUsage

GENERAL_INPUT = ComponentPrice("in", "input", "per_unit", None, unit_price=Decimal(1))
SCOPED_INPUT = ComponentPrice("in-a", "input", "per_unit", frozenset({"a"}), unit_price=Decimal(2))
GENERAL_OUTPUT = ComponentPrice("out", "output", "per_unit", None, unit_price=Decimal(3))
SCOPED_REASONING = ComponentPrice(
    "rs-b", "reasoning", "per_unit", frozenset({"b"}), unit_price=Decimal(4)
)
COMPONENTS = (GENERAL_INPUT, SCOPED_INPUT, GENERAL_OUTPUT, SCOPED_REASONING)


@pytest.mark.parametrize(
    ("alias", "token_class", "expected"),
    [
        ("a", "input", (1, False)),  # the scoped component beats the general one
        ("z", "input", (0, False)),  # else the general one
        ("a", "output", (2, False)),
        ("b", "reasoning", (3, False)),  # reasoning priced where a component covers it
        ("a", "reasoning", (2, True)),  # else folded into the output component
        ("a", "cache_read", (None, False)),  # nothing covers it: unpriced
    ],
)
def test_component_covering(
    alias: str, token_class: str, expected: tuple[int | None, bool]
) -> None:
    assert component_covering(COMPONENTS, alias, token_class) == expected


def test_reasoning_folds_nowhere_without_an_output_component() -> None:
    assert component_covering((GENERAL_INPUT,), "a", "reasoning") == (None, False)


def test_one_mapping_between_ledger_and_pricing_names() -> None:
    assert tuple(LEDGER_FIELDS) == TOKEN_CLASSES
    assert LEDGER_COLUMNS == tuple(LEDGER_FIELDS.values())
    assert {PRICING_CLASS[column] for column in LEDGER_COLUMNS} == set(TOKEN_CLASSES)
    usage = TokenUsage(1, 2, 3, 4, 5)
    assert usage.by_class() == {
        "input": 1,
        "cache_read": 2,
        "cache_write": 3,
        "output": 4,
        "reasoning": 5,
    }
