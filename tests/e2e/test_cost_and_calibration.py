"""Serving cost stamped by the real proxy, and calibration against the simulator."""

import io
from decimal import Decimal

import openai
import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.costs.catalogue import accelerator_get, catalogue_load, deployment_set
from billing.models import CalibrationRun, Deployment
from metering.models import ServingCostRate, UsageRecord
from metering.usage import LEDGER_COLUMNS
from tests.e2e.conftest import E2ETenant, free_port, start, stop
from tests.usage_helpers import serving_cost_at


def test_proxy_stamps_each_record_with_its_exact_serving_cost(e2e: E2ETenant) -> None:
    catalogue_load()
    deployment_set(
        alias="reasoner",
        accelerator=accelerator_get("nvidia-h100-sxm"),
        effective_from=timezone.now(),
        decode_tokens_per_s=Decimal(3913),
        prefill_tokens_per_s=Decimal(11739),
    )
    rate = ServingCostRate.objects.get(alias="reasoner")
    raw = openai.OpenAI(
        base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0
    ).chat.completions.with_raw_response.create(
        model="reasoner", messages=[{"role": "user", "content": "Think."}], reasoning_effort="high"
    )
    row = UsageRecord.objects.get(request_id=raw.headers["x-reckon-request-id"])
    expected, reasoning = serving_cost_at(
        rate, {column: getattr(row, column) for column in LEDGER_COLUMNS}
    )
    assert row.cost_rate_id == rate.pk
    assert row.serving_cost_usd == expected > 0
    assert (
        row.reasoning_cost_usd == reasoning == row.reasoning_tokens * rate.reasoning_usd / 1_000_000
    )
    other = UsageRecord.objects.filter(alias="thinker").first()
    assert other is None or other.serving_cost_usd is None  # no deployment: no cost, not a guess


@pytest.fixture
def paced_simulator():  # type: ignore[no-untyped-def]
    port = free_port()
    process = start(
        ["run_simulator", "--port", str(port), "--tokens-per-second", "200"],
        {},
        f"http://127.0.0.1:{port}/_sim/health",
    )
    yield f"http://127.0.0.1:{port}/v1"
    stop(process)


@pytest.mark.django_db(transaction=True)
def test_calibration_measures_a_known_throughput(paced_simulator: str) -> None:
    catalogue_load()
    out = io.StringIO()
    call_command(
        "calibrate",
        "--base-url",
        paced_simulator,
        "--model",
        "sim-reasoner",
        "--concurrency",
        "4",
        "--duration",
        "3",
        "--apply-to",
        "paced",
        "--accelerator",
        "nvidia-l40s",
        "--prefill-tokens-per-s",
        "20000",
        stdout=out,
    )
    run = CalibrationRun.objects.get()
    # 4 streams at 200 tokens/s each: 800 tokens/s in all; tolerance 25 % (request
    # turnaround between streams and the simulator's batched sleeps cost a little)
    assert Decimal(600) <= run.decode_tokens_per_s <= Decimal(840), run.decode_tokens_per_s
    assert run.requests >= 4 and run.completion_tokens > 0
    deployment = Deployment.objects.get(alias="paced")
    assert (
        deployment.calibration_id == run.pk
        and deployment.decode_tokens_per_s == run.decode_tokens_per_s
    )
    assert "calibration #" in out.getvalue()
