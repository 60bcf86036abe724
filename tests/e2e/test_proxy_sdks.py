"""The official SDKs, through a real Reckon server, to the simulator: every endpoint,
streaming and not; the ledger matches what the SDK saw and what the upstream served."""

import anthropic
import openai
import pytest
from django.db.models import Sum

from metering.models import UsageRecord
from tests.e2e.conftest import E2ETenant

PROMPT = [{"role": "user", "content": "Why is the sky blue? Think it through."}]


def oa(e2e: E2ETenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)


def an(e2e: E2ETenant) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0)


def record(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(request_id=request_id)


def test_chat_completion_records_exact_usage(e2e: E2ETenant) -> None:
    raw = oa(e2e).chat.completions.with_raw_response.create(
        model="reasoner", messages=PROMPT, reasoning_effort="high"
    )
    completion = raw.parse()
    usage = completion.usage
    row = record(raw.headers["x-reckon-request-id"])
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert row.reasoning_tokens == usage.completion_tokens_details.reasoning_tokens
    assert row.output_tokens == usage.completion_tokens - row.reasoning_tokens
    cached = usage.prompt_tokens_details.cached_tokens
    assert (row.input_tokens, row.cached_input_tokens) == (usage.prompt_tokens - cached, cached)
    assert (row.status, row.reasoning_source, row.stream, row.flags) == (
        "completed",
        "reported",
        False,
        [],
    )
    assert row.upstream_response_id == completion.id
    assert completion.model == "sim-reasoner"  # the upstream's answer, unchanged
    assert row.alias == "reasoner" and row.accelerator == "nvidia-h100-sxm"


def test_chat_stream_without_usage_request_hides_usage_and_still_records_it(e2e: E2ETenant) -> None:
    stream = oa(e2e).chat.completions.create(
        model="reasoner", messages=PROMPT, reasoning_effort="medium", stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)  # the client did not ask
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    row = UsageRecord.objects.get(upstream_response_id=chunks[0].id)
    totals = e2e.sim_totals()
    assert row.stream and row.status == "completed"
    assert row.reasoning_tokens == totals["reasoning_tokens"] > 0
    assert row.output_tokens == totals["output_tokens"]
    assert row.ttft_us is not None and row.ttft_us <= row.latency_us


def test_chat_stream_with_usage_request_passes_usage_through(e2e: E2ETenant) -> None:
    chunks = list(
        oa(e2e).chat.completions.create(
            model="reasoner",
            messages=PROMPT,
            reasoning_effort="low",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    row = UsageRecord.objects.get(upstream_response_id=chunks[0].id)
    assert row.reasoning_tokens == usage.completion_tokens_details.reasoning_tokens
    assert row.output_tokens + row.reasoning_tokens == usage.completion_tokens


def test_responses_api_streaming_and_not(e2e: E2ETenant) -> None:
    client = oa(e2e)
    raw = client.responses.with_raw_response.create(
        model="reasoner", input="Plan a trip.", reasoning={"effort": "medium"}
    )
    response = raw.parse()
    row = record(raw.headers["x-reckon-request-id"])
    assert row.endpoint == "responses"
    assert row.reasoning_tokens == response.usage.output_tokens_details.reasoning_tokens > 0
    assert row.output_tokens == response.usage.output_tokens - row.reasoning_tokens

    with client.responses.stream(
        model="reasoner", input="Plan a trip.", reasoning={"effort": "high"}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    row = UsageRecord.objects.get(upstream_response_id=final.id, stream=True)
    assert row.reasoning_tokens == final.usage.output_tokens_details.reasoning_tokens
    assert row.status == "completed"


def test_anthropic_messages_streaming_and_not(e2e: E2ETenant) -> None:
    client = an(e2e)
    raw = client.messages.with_raw_response.create(
        model="thinker",
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=PROMPT,
    )
    message = raw.parse()
    row = record(raw.headers["x-reckon-request-id"])
    assert row.endpoint == "messages" and row.provider == "anthropic"
    assert row.input_tokens == message.usage.input_tokens
    assert row.output_tokens + row.reasoning_tokens == message.usage.output_tokens
    assert row.reasoning_tokens > 0 and row.reasoning_source == "reported"

    with client.messages.stream(
        model="thinker",
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 1500},
        messages=PROMPT,
    ) as stream:
        final = stream.get_final_message()
    row = UsageRecord.objects.get(upstream_response_id=final.id)
    assert row.stream
    assert row.output_tokens + row.reasoning_tokens == final.usage.output_tokens
    assert row.cache_write_tokens == (final.usage.cache_creation_input_tokens or 0)
    assert row.cached_input_tokens == (final.usage.cache_read_input_tokens or 0)


def test_anthropic_bearer_auth_also_works(e2e: E2ETenant) -> None:
    client = anthropic.Anthropic(
        base_url=e2e.reckon_url, auth_token=e2e.raw_key, api_key=None, max_retries=0
    )
    message = client.messages.create(model="thinker", max_tokens=200, messages=PROMPT)
    assert UsageRecord.objects.filter(upstream_response_id=message.id).count() == 1


def test_models_lists_only_the_aliases_this_key_may_call(e2e: E2ETenant) -> None:
    ids = {m.id for m in oa(e2e).models.list()}
    assert {"reasoner", "thinker", "vllm-r1"} <= ids
    assert not any(i.startswith("sim-") for i in ids)
    assert {m.id for m in an(e2e).models.list()} == ids


@pytest.mark.parametrize(
    ("alias", "source"),
    [
        ("vllm-r1", "estimated"),
        ("deepseek-r1", "reported"),
        ("llamacpp-r1", "estimated"),
        ("nonempty-r1", "reported"),
    ],
)
def test_openai_compatible_servers_streaming(e2e: E2ETenant, alias: str, source: str) -> None:
    chunks = list(
        oa(e2e).chat.completions.create(
            model=alias, messages=PROMPT, reasoning_effort="high", stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    row = UsageRecord.objects.get(alias=alias)
    totals = e2e.sim_totals()
    assert row.reasoning_source == source
    assert (
        row.output_tokens + row.reasoning_tokens
        == totals["output_tokens"] + totals["reasoning_tokens"]
    )
    assert (
        row.input_tokens + row.cached_input_tokens
        == totals["input_tokens"] + totals["cached_input_tokens"]
    )
    if source == "reported":
        assert row.reasoning_tokens == totals["reasoning_tokens"]


def test_ledger_equals_simulator_totals_over_a_mixed_workload(e2e: E2ETenant) -> None:
    client, aclient = oa(e2e), an(e2e)
    for effort in ("minimal", "low", "medium", "high"):
        client.chat.completions.create(model="reasoner", messages=PROMPT, reasoning_effort=effort)
        list(
            client.chat.completions.create(
                model="reasoner", messages=PROMPT, reasoning_effort=effort, stream=True
            )
        )
        client.responses.create(model="reasoner", input="q", reasoning={"effort": effort})
    for budget in (1024, 3000):
        aclient.messages.create(
            model="thinker",
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": budget},
            messages=PROMPT,
        )
        with aclient.messages.stream(
            model="thinker",
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": budget},
            messages=PROMPT,
        ) as s:
            s.get_final_message()
    totals = e2e.sim_totals()
    ledger = UsageRecord.objects.filter(tenant=e2e.tenant).aggregate(
        input_tokens=Sum("input_tokens"),
        cached_input_tokens=Sum("cached_input_tokens"),
        cache_write_tokens=Sum("cache_write_tokens"),
        output_tokens=Sum("output_tokens"),
        reasoning_tokens=Sum("reasoning_tokens"),
    )
    assert UsageRecord.objects.filter(tenant=e2e.tenant).count() == totals["requests"] == 16
    for name, value in ledger.items():
        assert value == totals[name], name
