"""Prorating a plan version to a segment of a billing period. Pure.

A segment covering `share` of its period (exact Decimal in (0, 1]) pays that share of
the base fee and of the minimum commitment, and gets that share of each allowance,
rounded down to whole tokens. Tiers are not prorated: they apply to the segment's usage.
"""

import dataclasses
from decimal import ROUND_FLOOR, Decimal

from billing.pricing.priced_plan import PricePlan

ONE = Decimal(1)


def prorate_plan(plan: PricePlan, share: Decimal) -> PricePlan:
    if not Decimal(0) < share <= ONE:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if share == ONE:
        return plan
    components = tuple(
        dataclasses.replace(
            c,
            included_tokens=int(
                (Decimal(c.included_tokens) * share).to_integral_value(rounding=ROUND_FLOOR)
            ),
        )
        for c in plan.components
    )
    return dataclasses.replace(
        plan,
        components=components,
        base_fee=plan.base_fee * share,
        minimum_commitment=plan.minimum_commitment * share,
    )
