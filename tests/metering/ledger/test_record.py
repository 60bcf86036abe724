"""What a call writes (metering.ledger.record): the row the ledger stores, with its serving cost
and its spend at list prices stamped exactly."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from metering.ledger.postgres import _PG_COLUMNS
from metering.ledger.record import Rates, serving_cost, usage_cost, usage_record_row
from metering.models import Route, ServingCostRate
from metering.proxy.callers import RouteInfo, route_info_from
from metering.usage import LEDGER_COLUMNS, TOKEN_CLASSES, TokenUsage

COST = Rates(Decimal("1"), Decimal("0.1"), Decimal("1.25"), Decimal("4"), Decimal("4"))
LIST = Rates(Decimal("3"), Decimal("0.3"), Decimal("3.75"), Decimal("12"), Decimal("15"))
USAGE = TokenUsage(1000, 200, 30, 400, 600, "reported", ["capped_reasoning"])
STARTED = datetime(2026, 11, 20, 12, tzinfo=UTC)


def route(**kwargs: object) -> RouteInfo:
    return RouteInfo(
        alias="reasoner",
        provider="openai",
        upstream_model="sim-reasoner",
        accelerator="nvidia-h100-sxm",
        base_url="http://127.0.0.1:9/v1",
        credential="",
        credential_missing=False,
        **kwargs,  # type: ignore[arg-type]
    )


def row_for(info: RouteInfo) -> tuple[dict[str, object], Decimal | None]:
    return usage_record_row(
        request_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        api_key_id=7,
        route=info,
        endpoint="chat.completions",
        stream=True,
        status="completed",
        upstream_status=200,
        response_id="r" * 300,
        usage=USAGE,
        flags=["client_cut"],
        raw_usage={"total_tokens": 2230},
        client_disconnected=False,
        ttft_us=None,
        latency_us=1234,
        started_at=STARTED,
    )


def test_a_priced_route_stamps_cost_and_spend_exactly() -> None:
    row, spend = row_for(route(cost_rate_id=3, cost_rates=COST, spend_rates=LIST))
    tokens = {"input": 1000, "cache_read": 200, "cache_write": 30, "output": 400, "reasoning": 600}
    cost, reasoning_cost = serving_cost(COST, **tokens)
    assert (row["serving_cost_usd"], row["reasoning_cost_usd"]) == (cost, reasoning_cost)
    assert spend == row["spend_usd"] == serving_cost(LIST, **tokens)[0]
    assert row["cost_rate_id"] == 3
    assert row["flags"] == ["capped_reasoning", "client_cut"]  # the usage's, then the proxy's
    assert len(row["upstream_response_id"]) == 200  # type: ignore[arg-type]
    assert {column: row[column] for column in LEDGER_COLUMNS} == {
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "cache_write_tokens": 30,
        "output_tokens": 400,
        "reasoning_tokens": 600,
    }
    assert row["reasoning_source"] == "reported"
    assert usage_cost(COST, USAGE) == (cost, reasoning_cost)


def test_an_unpriced_route_writes_no_prices() -> None:
    row, spend = row_for(route())
    assert spend is None
    assert row["serving_cost_usd"] is row["reasoning_cost_usd"] is row["spend_usd"] is None


def test_rates_are_read_by_token_class_name() -> None:
    assert Rates._fields == TOKEN_CLASSES
    rate = ServingCostRate(
        input_usd=Decimal(1),
        cache_read_usd=Decimal(2),
        cache_write_usd=Decimal(3),
        output_usd=Decimal(4),
        reasoning_usd=Decimal(5),
    )
    info = route_info_from(Route(alias_id="reasoner", base_url="http://127.0.0.1:9/v1/"), rate)
    assert info.cost_rates == Rates(
        input=Decimal(1),
        cache_read=Decimal(2),
        cache_write=Decimal(3),
        output=Decimal(4),
        reasoning=Decimal(5),
    )


def test_the_route_s_provider_account_is_stamped_as_served() -> None:
    on_account = Route(
        alias_id="reasoner",
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        upstream_model="gpt-5",
        provider_account_id=17,
    )
    own = Route(
        alias_id="local", provider="openai-compatible", base_url="http://h/v1", upstream_model="x"
    )
    assert route_info_from(on_account).provider_account_id == 17
    assert route_info_from(own).provider_account_id is None
    assert row_for(route_info_from(on_account))[0]["provider_account_id"] == 17
    assert row_for(route_info_from(own))[0]["provider_account_id"] is None


def test_a_row_holds_exactly_the_columns_the_batch_insert_writes() -> None:
    row, _ = row_for(route(provider_account_id=3))
    assert set(row) == {name for name, _ in _PG_COLUMNS}
