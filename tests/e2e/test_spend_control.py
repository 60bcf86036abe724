"""Spend control through a real server and real Redis: the concurrency guarantee, rate
limits the openai SDK's retries honour, reasoning governance, and a dead control store."""

import asyncio
import json
import math
import os
import time
from decimal import ROUND_CEILING, Decimal

import aiohttp
import openai
import pytest
from django.db.models import Sum

from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.models import RateLimit, ReasoningPolicy, SpendLimit, UsageRecord
from tests.e2e.conftest import E2ETenant, free_port, http, start, stop

PROMPT = [{"role": "user", "content": "Plan a long trip and reason carefully."}]
OUTPUT_PER_M = Decimal("10")  # USD per 1M output (and reasoning) tokens
INPUT_PER_M = Decimal("2")


def priced(e2e: E2ETenant) -> None:
    from datetime import UTC, datetime

    plan = plan_create(code="metered", name="Metered")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": INPUT_PER_M},
                {"token_class": "output", "charge_model": "per_unit", "unit_price": OUTPUT_PER_M},
            ],
        )
    )
    subscription_create(
        tenant=e2e.tenant, plan_version=version, starts_at=datetime(2026, 1, 1, tzinfo=UTC)
    )


def nano(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_CEILING))


async def _stream(session: aiohttp.ClientSession, url: str, key: str, body: bytes) -> int:
    async with session.post(
        url,
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as r:
        await r.read()
        return r.status


def test_64_concurrent_streams_never_exceed_the_limit_and_none_is_refused_early(
    e2e: E2ETenant,
) -> None:
    priced(e2e)
    max_tokens = 200
    body = json.dumps(
        {
            "model": "slow-reasoner",
            "messages": PROMPT,
            "stream": True,
            "max_completion_tokens": max_tokens,
            "reasoning_effort": "high",
        }
    ).encode()
    # the proxy's hold: ceil(bytes / 3) input tokens at the input price, plus the cap at the output price
    hold = nano((math.ceil(len(body) / 3) * INPUT_PER_M + max_tokens * OUTPUT_PER_M) / 1_000_000)
    fits = 20
    limit = Decimal(hold * fits + hold // 2) / 10**9  # room for 20.5 holds
    SpendLimit.objects.create(tenant=e2e.tenant, window="total", amount_usd=limit)

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(
                *(
                    _stream(session, e2e.openai_base + "/chat/completions", e2e.raw_key, body)
                    for _ in range(64)
                )
            )

    statuses = asyncio.run(burst())
    admitted = statuses.count(200)
    # every stream lasts ~1 s (200 tokens at 5 ms), so all 64 admissions happen before any
    # settles: exactly the holds that fit are admitted, no more and no fewer
    assert admitted == fits, statuses
    assert statuses.count(429) == 64 - fits
    spent = UsageRecord.objects.filter(tenant=e2e.tenant).aggregate(s=Sum("spend_usd"))["s"]
    assert UsageRecord.objects.filter(tenant=e2e.tenant).count() == fits
    assert spent <= limit
    # holds were released to the actual spend: the remaining budget admits new calls again
    status, _, _ = http(
        "POST",
        e2e.openai_base + "/chat/completions",
        json.loads(body) | {"stream": False},
        {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"},
    )
    assert status == 200


def test_leased_calls_fill_a_limit_and_none_is_refused_while_it_covers_one(
    e2e: E2ETenant,
) -> None:
    """Far from the limit the server admits calls on slices (metering.control.leases), near it
    call by call: spend never passes the limit, and once all calls have settled a call
    is refused only when what is left cannot cover its hold."""
    from config.redis_clients import redis_client

    priced(e2e)
    max_tokens = 40
    body = json.dumps(
        {"model": "reasoner", "messages": PROMPT, "max_completion_tokens": max_tokens}
    ).encode()
    hold = nano((math.ceil(len(body) / 3) * INPUT_PER_M + max_tokens * OUTPUT_PER_M) / 1_000_000)
    limit_nano = hold * 1500  # room for slices of 32 calls (16 times larger) at first
    SpendLimit.objects.create(
        tenant=e2e.tenant, window="total", amount_usd=Decimal(limit_nano) / 10**9
    )
    url = e2e.openai_base + "/chat/completions"

    async def until_refused(session: aiohttp.ClientSession) -> int:
        admitted = 0
        while await _stream(session, url, e2e.raw_key, body) == 200:
            admitted += 1
        return admitted

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(until_refused(session) for _ in range(16)))

    concurrent = sum(asyncio.run(burst()))
    budget = redis_client(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    assert budget.hexists(
        f"rk:{{{e2e.tenant.id}}}:spend:tenant:{e2e.tenant.id}:total", "leased"
    )  # slices were used
    time.sleep(0.3)  # the last leased calls are reported

    def left() -> int:
        spends = UsageRecord.objects.filter(tenant=e2e.tenant).values_list("spend_usd", flat=True)
        return limit_nano - sum(nano(s) for s in spends)

    sequential = 0
    while True:  # one call at a time: refused exactly when what is left cannot cover it
        status, _, _ = http(
            "POST",
            url,
            json.loads(body),
            {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"},
        )
        if status != 200:
            assert status == 429
            break
        sequential += 1
    assert 0 <= left() < hold, (concurrent, sequential, left(), hold)
    assert UsageRecord.objects.filter(tenant=e2e.tenant).count() == concurrent + sequential
    assert concurrent > 1500  # the calls use less than their holds: more fit than 1500


def test_rate_limits_are_shared_have_headers_and_the_sdk_retries(e2e: E2ETenant) -> None:
    priced(e2e)
    RateLimit.objects.create(tenant=e2e.tenant, requests_per_minute=2)
    headers = {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"}
    body = {"model": "reasoner", "messages": PROMPT}
    # align to the start of a 3 s window so the two allowed calls share it
    time.sleep(3 - time.time() % 3 + 0.05)
    first = http("POST", e2e.openai_base + "/chat/completions", body, headers)
    assert first[0] == 200 and first[1]["x-ratelimit-limit-requests"] == "2"
    assert first[1]["x-ratelimit-remaining-requests"] == "1"
    http("POST", e2e.openai_base + "/chat/completions", body, headers)
    limited = http("POST", e2e.openai_base + "/chat/completions", body, headers)
    assert limited[0] == 429 and limited[2]["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited[1]["retry-after"]) <= 4
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=3)
    started = time.monotonic()
    completion = client.chat.completions.create(model="reasoner", messages=PROMPT)  # waits, retries
    assert completion.choices and time.monotonic() - started >= 0.5
    assert UsageRecord.objects.filter(tenant=e2e.tenant).count() == 3


def test_reasoning_governance_clamps_or_refuses(e2e: E2ETenant) -> None:
    key = e2e.tenant.api_keys.get()
    policy = ReasoningPolicy.objects.create(
        api_key=key, allowed_efforts=["minimal", "low"], max_output_tokens=120
    )
    time.sleep(0.6)  # caller cache TTL in tests
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    usage = client.chat.completions.create(
        model="reasoner", messages=PROMPT, reasoning_effort="high", max_completion_tokens=5000
    ).usage
    assert usage.completion_tokens <= 120  # clamped to the key's cap (reasoning included)
    policy.mode = "refuse"
    policy.save()
    time.sleep(0.6)
    with pytest.raises(openai.BadRequestError, match="not allowed for this key"):
        client.chat.completions.create(model="reasoner", messages=PROMPT, reasoning_effort="high")


@pytest.mark.parametrize("fail_open", [False, True])
def test_dead_control_store_fails_closed_by_default(e2e: E2ETenant, fail_open: bool) -> None:
    from tests.e2e.conftest import database_url

    RateLimit.objects.create(tenant=e2e.tenant, requests_per_minute=100)
    port = free_port()
    env = {
        "DATABASE_URL": database_url(),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RECKON_CONTROL_FAIL_OPEN": str(fail_open).lower(),
        "RECKON_SIMULATOR_API_KEY": "k",
    }
    process = start(["serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/v1/models")
    try:
        status, headers, body = http(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "reasoner", "messages": PROMPT},
            {"Authorization": f"Bearer {e2e.raw_key}", "Content-Type": "application/json"},
        )
    finally:
        stop(process)
    if fail_open:
        assert status == 200
    else:
        assert status == 503 and body["error"]["code"] == "spend_control_unavailable"
        assert headers["retry-after"] == "2"  # the caller's SDK waits before it retries
