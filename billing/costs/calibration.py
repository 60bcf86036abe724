"""Throughput calibration against any OpenAI-compatible server (vLLM, SGLang, the
simulator): drive it with N concurrent streaming chat completions for S seconds and
measure decode throughput from the usage it reports, then prefill from a probe phase
where each request decodes a single token (time to first token ~ prefill time).

Decode tokens per second = all completion tokens (visible + reasoning: both are decode
work) over the wall time of the run, divided by the accelerators serving it.

An exception to the import contract (billing reads metering only through its published
surface; pyproject.toml lists it under ``ignore_imports``): this module drives the server
with the proxy's own HTTP client and SSE framing (``metering.proxy.upstream``,
``metering.proxy.sse``) on purpose, so the throughput measured is the one the proxy sees
(the same pooled HTTP/1.1 client, flow control and stream splitting), not that of a second
client that could behave differently. It borrows only that transport: nothing of the
proxy's policy (auth, holds, cost stamping, the ledger) is used, and its errors are the
client's ``UpstreamError``, which ``manage.py calibrate`` reports.
"""

import asyncio
import statistics
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson

from billing.models import CalibrationRun
from metering.proxy.sse import SseSplitter
from metering.proxy.upstream import UpstreamClient, UpstreamError

PROMPT = (
    "You are calibrating an inference server. Consider the following passage and answer the "
    "question at the end in detail, reasoning step by step. "
    + "The quick brown fox jumps over the lazy dog while the accountant reconciles the ledger. "
    * 24
    + "Question: what does the accountant do, and why does it matter for billing?"
)


@dataclass(frozen=True)
class Sample:
    seconds: float  # float-ok: wall-clock durations, never money or token counts
    ttft: float | None  # float-ok
    prompt_tokens: int
    completion_tokens: int


async def _one(client: UpstreamClient, url: str, headers: dict[str, str], body: bytes) -> Sample:
    started = time.perf_counter()
    first: float | None = None  # float-ok
    usage: dict | None = None  # type: ignore[type-arg]
    response = await client.post(url, body, headers)
    try:
        if response.status != 200:
            raise UpstreamError(f"calibration request failed with HTTP {response.status}")
        splitter = SseSplitter()
        async for chunk in response.iter_chunks():
            if first is None:
                first = time.perf_counter()
            for event in splitter.feed(chunk):
                if event.data == b"[DONE]" or b'"usage"' not in event.data:
                    continue
                payload = orjson.loads(event.data)
                if isinstance(payload.get("usage"), dict):
                    usage = payload["usage"]
    finally:
        response.release()
    if usage is None:
        raise UpstreamError("the server reported no usage (stream_options.include_usage)")
    end = time.perf_counter()
    return Sample(
        end - started,
        None if first is None else first - started,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


async def _drive(
    base_url: str,
    model: str,
    api_key: str,
    concurrency: int,
    seconds: float,
    max_tokens: int | None,
) -> tuple[list[Sample], float]:  # float-ok
    client = UpstreamClient(connect_timeout=10, read_timeout=300)
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    request: dict = {  # type: ignore[type-arg]
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        request["max_completion_tokens"] = max_tokens
    body = orjson.dumps(request)
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            samples.append(await _one(client, url, headers, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return samples, elapsed


def calibrate(
    *,
    base_url: str,
    model: str,
    api_key: str = "calibration",
    concurrency: int,
    duration_s: Decimal,
    accelerators: int = 1,
) -> CalibrationRun:
    seconds = float(duration_s)  # float-ok: a duration for the event loop
    samples, elapsed = asyncio.run(_drive(base_url, model, api_key, concurrency, seconds, None))
    if not samples:
        raise UpstreamError("no request completed during the calibration run")
    completion = sum(s.completion_tokens for s in samples)
    prompt = sum(s.prompt_tokens for s in samples)
    wall = Decimal(str(round(elapsed, 6)))
    decode = Decimal(completion) / wall / Decimal(accelerators)
    probes, _ = asyncio.run(_drive(base_url, model, api_key, concurrency, min(seconds, 2.0), 1))
    ttfts = [s.ttft for s in probes if s.ttft is not None]
    prefill = None
    ttft_p50 = None
    if ttfts:
        median = statistics.median(ttfts)
        ttft_p50 = Decimal(str(round(median * 1000, 3)))
        if median >= 0.001:  # below a millisecond the server is too fast to tell prefill apart
            per_stream = Decimal(statistics.median(s.prompt_tokens for s in probes)) / Decimal(
                str(round(median, 6))
            )
            prefill = per_stream * concurrency / accelerators
    return CalibrationRun.objects.create(
        base_url=base_url,
        model=model,
        concurrency=concurrency,
        duration_s=wall,
        requests=len(samples),
        prompt_tokens=prompt,
        completion_tokens=completion,
        decode_tokens_per_s=decode.quantize(Decimal("0.001")),
        prefill_tokens_per_s=None if prefill is None else prefill.quantize(Decimal("0.001")),
        ttft_p50_ms=ttft_p50,
    )
