"""Serving cost of one request at a frozen rate. Pure, exact.

Rates are USD per million tokens with 18 decimals, so a cost has at most 24 decimals and
is computed and stored without rounding (a private high-precision context)."""

import decimal
from decimal import Decimal
from typing import NamedTuple

_CONTEXT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.Overflow])


class Rates(NamedTuple):
    """USD per 1M tokens: uncached input, cache read, cache write, visible output, reasoning."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal


def serving_cost(
    rates: Rates, *, input: int, cache_read: int, cache_write: int, output: int, reasoning: int
) -> tuple[Decimal, Decimal]:
    """(total cost, the part spent on reasoning), exact."""
    c = _CONTEXT
    reasoning_cost = c.multiply(Decimal(reasoning), rates.reasoning).scaleb(-6, context=c)
    rest = c.add(
        c.add(
            c.multiply(Decimal(input), rates.input),
            c.multiply(Decimal(cache_read), rates.cache_read),
        ),
        c.add(
            c.multiply(Decimal(cache_write), rates.cache_write),
            c.multiply(Decimal(output), rates.output),
        ),
    ).scaleb(-6, context=c)
    return c.add(rest, reasoning_cost), reasoning_cost
