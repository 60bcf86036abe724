"""Calls proxied to the simulator through a real server, then the live invoice preview
shows, to the minor unit, what an independent calculation from the SDKs' usage gives."""

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import anthropic
import openai

from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from tests.e2e.conftest import E2ETenant, http

PROMPT = [{"role": "user", "content": "Estimate the number of piano tuners in Chicago."}]
M = Decimal(1_000_000)


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_preview_matches_an_independent_calculation(e2e: E2ETenant) -> None:
    plan = plan_create(code="reasoning-payg", name="Reasoning PAYG")
    version = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        base_fee=Decimal("19"),
        components=[
            {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.10")},
            {
                "token_class": "cache_read",
                "charge_model": "per_unit",
                "unit_price": Decimal("0.275"),
            },
            {
                "token_class": "cache_write",
                "charge_model": "per_unit",
                "unit_price": Decimal("1.375"),
            },
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.40")},
            # reasoning: per 1k tokens, the first 1k at 0.0095, then 0.0044
            {
                "token_class": "reasoning",
                "charge_model": "graduated",
                "unit_tokens": 1000,
                "tiers": [
                    {"up_to": Decimal(1), "unit_price": Decimal("0.0095")},
                    {"up_to": None, "unit_price": Decimal("0.0044")},
                ],
            },
        ],
    )
    version = plan_version_publish(version=version)
    subscription_create(
        tenant=e2e.tenant, plan_version=version, starts_at=datetime.now(UTC) - timedelta(days=40)
    )

    seen = {"input": 0, "cache_read": 0, "cache_write": 0, "output": 0, "reasoning": 0}
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    for effort in ("low", "medium", "high"):
        u = client.chat.completions.create(
            model="reasoner", messages=PROMPT, reasoning_effort=effort
        ).usage
        reasoning = u.completion_tokens_details.reasoning_tokens
        cached = u.prompt_tokens_details.cached_tokens
        seen["input"] += u.prompt_tokens - cached
        seen["cache_read"] += cached
        seen["output"] += u.completion_tokens - reasoning
        seen["reasoning"] += reasoning
    with anthropic.Anthropic(
        base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0
    ).messages.stream(
        model="thinker",
        max_tokens=3000,
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=PROMPT,
    ) as stream:
        u = stream.get_final_message().usage
    thinking = u.output_tokens_details.thinking_tokens if u.output_tokens_details else 0
    seen["input"] += u.input_tokens
    seen["cache_read"] += u.cache_read_input_tokens or 0
    seen["cache_write"] += u.cache_creation_input_tokens or 0
    seen["output"] += u.output_tokens - thinking
    seen["reasoning"] += thinking
    assert seen["reasoning"] > 1000  # both reasoning tiers are reached

    k = Decimal(seen["reasoning"]) / 1000
    expected_lines = [
        cents(Decimal(19)),
        cents(seen["input"] / M * Decimal("1.10")),
        cents(seen["cache_read"] / M * Decimal("0.275")),
        cents(seen["cache_write"] / M * Decimal("1.375")),
        cents(seen["output"] / M * Decimal("4.40")),
        cents(1 * Decimal("0.0095") + (k - 1) * Decimal("0.0044")),
    ]
    status, _, preview = http(
        "GET",
        e2e.reckon_url + "/api/v1/invoices/upcoming",
        headers={"Authorization": f"Bearer {e2e.raw_key}"},
    )
    assert status == 200, preview
    (segment,) = preview["segments"]
    assert [line["amount_minor"] for line in segment["lines"]] == expected_lines
    assert preview["total_minor"] == sum(expected_lines)
    reasoning_line = segment["lines"][-1]
    assert reasoning_line["tokens"] == seen["reasoning"]
    assert [t["tier"] for t in reasoning_line["tiers"]] == [0, 1]
