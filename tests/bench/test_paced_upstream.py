"""The streaming benchmark's paced upstream speaks OpenAI chat-completions streaming as the
official SDK reads it, and reports in its totals exactly the usage its streams carried."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "bench/paced_upstream.py", "--port", str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.e2e
def test_paced_stream_reads_with_the_openai_sdk_and_matches_the_totals(upstream: str) -> None:
    post(upstream + "/_paced/config", {"chunks": 8, "interval": 0.01})
    client = openai.OpenAI(base_url=upstream + "/v1", api_key="unused")
    usages = []
    for _ in range(3):
        chunks = list(
            client.chat.completions.create(
                model="paced-test",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        # role frame, 6 deltas (3 reasoning, 3 content), finish, then the usage chunk
        assert len(chunks) == 9
        assert chunks[0].choices[0].delta.role == "assistant"
        reasoning = [
            c for c in chunks[1:7] if c.choices[0].delta.model_extra.get("reasoning_content")
        ]
        content = [c for c in chunks[1:7] if c.choices[0].delta.content]
        assert (len(reasoning), len(content)) == (3, 3)
        assert chunks[7].choices[0].finish_reason == "stop"
        assert chunks[8].choices == [] and chunks[8].usage is not None
        assert all(c.usage is None for c in chunks[:8])
        usage = chunks[8].usage
        details = usage.completion_tokens_details
        assert details is not None and details.reasoning_tokens
        # each delta stands for the same number of tokens within a stream
        assert usage.completion_tokens == 2 * details.reasoning_tokens
        usages.append(usage)
    with urllib.request.urlopen(upstream + "/_paced/totals", timeout=10) as response:
        totals = json.loads(response.read())["paced-test"]
    assert totals == {
        "started": 3,
        "completed": 3,
        "prompt_tokens": sum(u.prompt_tokens for u in usages),
        "completion_tokens": sum(u.completion_tokens for u in usages),
        "reasoning_tokens": sum(u.completion_tokens_details.reasoning_tokens for u in usages),
    }


@pytest.mark.e2e
def test_paced_messages_stream_reads_with_the_anthropic_sdk_and_matches_the_totals(
    upstream: str,
) -> None:
    """A thinking block, then a text block; the output tokens are the totals', and the
    thinking tokens are in proportion to the thinking characters (what a proxy estimates)."""
    post(upstream + "/_paced/config", {"chunks": 8, "interval": 0.01})
    client = anthropic.Anthropic(base_url=upstream, api_key="unused")
    with client.messages.stream(
        model="paced-messages",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "enabled", "budget_tokens": 50},
    ) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content[0].thinking, message.content[1].text  # type: ignore[union-attr]
    # 6 deltas, 3 of each, every token "tok "
    assert len(thinking) == len(text) and thinking.count("tok ") * 4 == len(thinking)
    assert message.usage.output_tokens == 2 * thinking.count("tok ")
    with urllib.request.urlopen(upstream + "/_paced/totals", timeout=10) as response:
        totals = json.loads(response.read())["paced-messages"]
    assert totals == {
        "started": 1,
        "completed": 1,
        "prompt_tokens": message.usage.input_tokens,
        "completion_tokens": message.usage.output_tokens,
        "reasoning_tokens": thinking.count("tok "),
    }
