"""Routes as operators type them, through a real Reckon server to the simulator: a route
set with each provider's documented base URL serves calls from the official SDKs."""

import anthropic
import openai
from django.core.management import call_command

from metering.models import UsageRecord
from tests.e2e.conftest import SIM_KEY_ENV, E2ETenant

PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]


def test_documented_base_urls_serve_calls(e2e: E2ETenant) -> None:
    # Anthropic documents its base URL without /v1 (its SDK adds it); OpenAI with /v1,
    # and operators also paste the bare host.
    for alias, provider, model in [
        ("claude-docs", "anthropic", "sim-thinker"),
        ("gpt-bare-host", "openai", "sim-reasoner"),
    ]:
        call_command(
            "route_set", alias, "--provider", provider, "--base-url", e2e.simulator_url + "/",
            "--upstream-model", model, "--api-key-env", SIM_KEY_ENV,
            "--allow-tenant", str(e2e.tenant.id),
        )  # fmt: skip

    claude = anthropic.Anthropic(base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="claude-docs", max_tokens=256, messages=PROMPT
    )
    message = raw.parse()
    assert message.usage.output_tokens > 0
    row = UsageRecord.objects.get(request_id=raw.headers["x-reckon-request-id"])
    assert (row.alias, row.status) == ("claude-docs", "completed")

    gpt = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    completion = gpt.chat.completions.create(model="gpt-bare-host", messages=PROMPT)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
