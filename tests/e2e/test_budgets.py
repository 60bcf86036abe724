"""Budgets through a real server and real Redis: a prepaid balance that stops calls, open
calls granted what is left (never less than the learned plausible size), and the plan's
reasoning governance and monthly reasoning-token budget, in each caller's wire format."""

import json
import math
import time
from decimal import Decimal

import anthropic
import openai
import pytest
from django.db.models import Sum

from billing.balances import balance_credit
from billing.models import PlanVersion
from metering.models import HoldCap, ReasoningPolicy, UsageRecord
from tests.e2e.conftest import E2ETenant, http
from tests.e2e.test_spend_control import INPUT_PER_M, OUTPUT_PER_M, PROMPT, nano, priced

CACHE_S = 0.6  # the server's caller cache lives 0.5 s in tests


def call(e2e: E2ETenant, body: dict) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"}
    return http("POST", e2e.openai_base + "/chat/completions", body, headers)  # type: ignore[return-value]


def spent(e2e: E2ETenant) -> Decimal:
    total = UsageRecord.objects.filter(tenant=e2e.tenant).aggregate(s=Sum("spend_usd"))["s"]
    return total or Decimal(0)


def test_a_prepaid_balance_stops_calls_and_open_calls_get_what_is_left(e2e: E2ETenant) -> None:
    priced(e2e)
    balance = Decimal("0.05")  # 5,000 output tokens at $10 / 1M
    balance_credit(tenant_id=e2e.tenant.pk, kind="top_up", amount=balance, idempotency_key="t")
    plausible = 200
    HoldCap.objects.create(
        tenant=e2e.tenant,
        alias="reasoner",
        p99_output_tokens=plausible,
        samples=500,
        computed_at="2026-11-01T00:00Z",
    )
    time.sleep(CACHE_S)
    body = {"model": "reasoner", "messages": PROMPT, "reasoning_effort": "high"}  # no maximum
    input_hold = nano(math.ceil(len(json.dumps(body).encode()) / 3) * INPUT_PER_M / 1_000_000)
    per_token = nano(OUTPUT_PER_M / 1_000_000)
    statuses, completions = [], []
    for _ in range(60):
        status, _, payload = call(e2e, body)
        statuses.append(status)
        if status != 200:
            refusal = payload
            break
        completions.append(payload["usage"]["completion_tokens"])
    else:
        pytest.fail("the balance never ran out")
    assert statuses[-1] == 429 and refusal["error"]["code"] == "insufficient_quota"
    assert "prepaid balance" in refusal["error"]["message"]
    # never more than the balance, and refused only once a plausible call no longer fits
    left = nano(balance) - nano(spent(e2e))
    assert left >= 0
    assert left < input_hold + per_token * plausible
    # near the end, open calls were granted less than the ceiling: the grant went upstream
    # as max_completion_tokens and the simulator stopped there
    assert min(completions) < max(completions)
    records = UsageRecord.objects.filter(tenant=e2e.tenant).count()
    assert records == len(completions)
    # the same refusal in Anthropic's format on /v1/messages
    client = anthropic.Anthropic(base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(
            model="thinker", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    # a top-up takes effect on every server process within the cache bound
    balance_credit(
        tenant_id=e2e.tenant.pk, kind="top_up", amount=Decimal("1.00"), idempotency_key="t2"
    )
    time.sleep(CACHE_S)
    assert call(e2e, body)[0] == 200


def test_plan_governance_and_monthly_reasoning_budget(e2e: E2ETenant) -> None:
    priced(e2e)
    budget = 3000
    PlanVersion.objects.update(
        allowed_efforts=["low", "medium"], reasoning_mode="refuse", monthly_reasoning_tokens=budget
    )
    time.sleep(CACHE_S)
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="'high' is not allowed on your plan"):
        client.chat.completions.create(
            model="reasoner", messages=PROMPT, reasoning_effort="high", max_completion_tokens=500
        )
    used, refused = 0, None
    for _ in range(40):
        try:
            completion = client.chat.completions.create(
                model="reasoner",
                messages=PROMPT,
                reasoning_effort="medium",
                max_completion_tokens=800,
            )
        except openai.RateLimitError as exc:
            refused = exc
            break
        used += completion.usage.completion_tokens_details.reasoning_tokens
    assert refused is not None, "the reasoning budget never ran out"
    assert "plan monthly reasoning-token budget" in str(refused)
    recorded = UsageRecord.objects.filter(tenant=e2e.tenant).aggregate(r=Sum("reasoning_tokens"))
    assert recorded["r"] == used <= budget
    assert budget - used < 800  # refused only when the call's maximum no longer fit

    # a key's own budget in clamp mode lowers the maximum to what is left instead
    key = e2e.tenant.api_keys.get()
    PlanVersion.objects.update(monthly_reasoning_tokens=None)
    ReasoningPolicy.objects.create(api_key=key, monthly_reasoning_tokens=used + 100)
    time.sleep(CACHE_S)
    completion = client.chat.completions.create(
        model="reasoner", messages=PROMPT, reasoning_effort="medium", max_completion_tokens=800
    )
    assert completion.usage.completion_tokens <= 100  # clamped to the 100 tokens left
