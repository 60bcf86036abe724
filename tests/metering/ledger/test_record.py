"""What a call writes (metering.ledger.record): the row the ledger stores, with its serving cost
and its spend at list prices stamped exactly."""

import decimal
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.ledger import record
from metering.ledger.postgres import _PG_COLUMNS
from metering.ledger.record import (
    MAX_ATTEMPT,
    Rates,
    request_id_attempt,
    request_id_call_range,
    request_id_for,
    serving_cost,
    started_at_of,
    usage_cost,
    usage_record_row,
)
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


# --- routing stamps and attempt ids (decision 0117) ------------------------------------


def test_a_routed_attempt_row_carries_its_stamps() -> None:
    row, _ = usage_record_row(
        request_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        api_key_id=7,
        route=route(cost_rate_id=3, cost_rates=COST, spend_rates=LIST),
        endpoint="chat.completions",
        stream=False,
        status="failed",
        upstream_status=503,
        response_id="",
        usage=TokenUsage(),
        flags=[],
        raw_usage=None,
        client_disconnected=False,
        ttft_us=None,
        latency_us=10,
        started_at=STARTED,
        route_id=41,
        attempt=2,
        failed_over=True,
        route_policy="cheapest",
        route_reason="cost_tie_latency",
        reasoning_effort="high",
    )
    assert {k: row[k] for k in STAMPS} == {
        "route_id": 41,
        "attempt": 2,
        "failed_over": True,
        "route_policy": "cheapest",
        "route_reason": "cost_tie_latency",
        "reasoning_effort": "high",
    }
    assert row["serving_cost_usd"] == row["spend_usd"] == Decimal(0)  # zero tokens, priced


STAMPS = ("route_id", "attempt", "failed_over", "route_policy", "route_reason", "reasoning_effort")


def test_a_single_target_row_stamps_nothing_but_what_it_knows() -> None:
    row, _ = row_for(route())
    assert {k: row[k] for k in STAMPS} == dict.fromkeys(STAMPS)


def test_the_route_s_own_id_is_the_default_target_stamp() -> None:
    class WithId(NamedTuple):  # a RouteInfo that carries its route id (issue 16)
        alias: str = "reasoner"
        provider: str = "openai"
        upstream_model: str = "m"
        accelerator: str = ""
        provider_account_id: int | None = None
        cost_rate_id: int | None = None
        cost_rates: Rates | None = None
        spend_rates: Rates | None = None
        route_id: int | None = 12

    kwargs: dict[str, Any] = {
        "request_id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "api_key_id": 1,
        "route": WithId(),
        "endpoint": "responses",
        "stream": False,
        "status": "completed",
        "upstream_status": 200,
        "response_id": "",
        "usage": USAGE,
        "flags": [],
        "raw_usage": None,
        "client_disconnected": False,
        "ttft_us": None,
        "latency_us": 1,
        "started_at": STARTED,
    }
    assert usage_record_row(**kwargs)[0]["route_id"] == 12
    assert usage_record_row(**kwargs, route_id=13)[0]["route_id"] == 13


def test_stamps_longer_than_their_columns_are_cut_not_refused() -> None:
    row, _ = usage_record_row(
        request_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        api_key_id=7,
        route=route(),
        endpoint="chat.completions",
        stream=False,
        status="completed",
        upstream_status=200,
        response_id="",
        usage=USAGE,
        flags=[],
        raw_usage=None,
        client_disconnected=False,
        ttft_us=None,
        latency_us=1,
        started_at=STARTED,
        route_reason="rule:" + "x" * 100,
        reasoning_effort="e" * 40,
        route_policy="p" * 20,
    )
    assert len(row["route_reason"]) == 64
    assert row["reasoning_effort"] == "e" * 16
    assert row["route_policy"] == "p" * 16
    # "" is an answer (the call named no effort), kept apart from None (not known)
    assert row_for(route())[0]["reasoning_effort"] is None


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))  # noqa: DTZ001
def test_every_attempt_id_keeps_the_call_s_start_and_upper_bits(at: datetime) -> None:
    first = request_id_for(at, attempt=1)
    ids = [first, *(request_id_attempt(first, k) for k in range(2, MAX_ATTEMPT + 1))]
    for k, attempt_id in enumerate(ids, start=1):
        assert attempt_id.version == 7
        assert attempt_id.variant == uuid.RFC_4122
        assert started_at_of(attempt_id) == at
        assert attempt_id.int & 0xF == k
        assert attempt_id.int >> 4 == first.int >> 4
        low, high = request_id_call_range(attempt_id)
        assert low <= attempt_id <= high
        assert request_id_call_range(attempt_id) == request_id_call_range(first)
    assert len(set(ids)) == MAX_ATTEMPT


def test_attempt_ids_refuse_what_they_cannot_carry() -> None:
    first = request_id_for(STARTED, attempt=1)
    for bad in (0, 16, -1):
        with pytest.raises(ValueError, match="outside 1..15"):
            request_id_attempt(first, bad)
    with pytest.raises(ValueError, match="version-7"):
        request_id_attempt(uuid.uuid4(), 2)
    # attempt 0 (never retried): every low bit random, so two calls at one instant differ
    assert len({request_id_for(STARTED).int & 0xF for _ in range(200)}) > 1
    assert request_id_for(STARTED, attempt=3).int & 0xF == 3


@pytest.mark.django_db
def test_attempt_rows_insert_on_the_partitioned_ledger_and_replay_adds_nothing() -> None:
    """The CHECK that a v7 id encodes started_at (metering_uuid7_started_at) accepts the
    attempt bits; both attempts land in the call's partition, found by one range read."""
    from metering.ledger.orm import usage_records_write
    from metering.models import UsageRecord
    from tests.factories import ApiKeyFactory
    from tests.usage_helpers import ensure_test_partitions, record_for

    ensure_test_partitions()
    key = ApiKeyFactory()
    at = datetime.now(UTC).replace(microsecond=654321)
    first = request_id_for(at, attempt=1)
    second = request_id_attempt(first, 2)
    rows = [
        record_for(
            key,
            request_id=first,
            started_at=at,
            finished_at=at,
            status="failed",
            upstream_status=0,
            input_tokens=0,
            output_tokens=0,
            reasoning_tokens=0,
            route_id=5,
            attempt=1,
            failed_over=True,
            route_policy="fallback",
            route_reason="priority",
            reasoning_effort="",
        ),
        record_for(
            key,
            request_id=second,
            started_at=at,
            finished_at=at,
            route_id=6,
            attempt=2,
            failed_over=False,
            route_policy="fallback",
            route_reason="failover",
            reasoning_effort="",
        ),
    ]
    assert usage_records_write(rows) == 2
    assert usage_records_write(rows) == 0
    found = UsageRecord.objects.filter(request_id__range=request_id_call_range(second))
    assert sorted(found.values_list("attempt", "route_id", "failed_over", "started_at")) == [
        (1, 5, True, at),
        (2, 6, False, at),
    ]
    assert set(found.values_list("reasoning_effort", flat=True)) == {""}


_PREVIOUS = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.Overflow])


def _previous_cost(rates: Rates, counts: tuple[int, ...]) -> tuple[Decimal, Decimal]:
    """The cost arithmetic as it was before the context's methods were bound (a25cac1):
    `Decimal(count)` operands, `.scaleb(-6, context=c)`."""
    c = _PREVIOUS
    input, cache_read, cache_write, output, reasoning = counts
    reasoning_cost = c.multiply(Decimal(reasoning), rates.reasoning).scaleb(-6, context=c)
    rest = c.add(
        c.add(
            c.multiply(Decimal(input), rates.input),
            c.multiply(Decimal(cache_read), rates.cache_read),
        ),
        c.add(
            c.multiply(Decimal(cache_write), rates.cache_write),
            c.multiply(Decimal(output), rates.output),
        ),
    ).scaleb(-6, context=c)
    return c.add(rest, reasoning_cost), reasoning_cost


# rates with up to 24 decimal places (a cost's most), counts anywhere up to and around 2**53
_rate = st.decimals(min_value=0, max_value=10**6, places=24, allow_nan=False, allow_infinity=False)
_count = st.integers(0, 2**53 + 2**20) | st.integers(2**53 - 2**10, 2**53 + 2**10)


@given(rates=st.builds(Rates, _rate, _rate, _rate, _rate, _rate), counts=st.tuples(*[_count] * 5))
def test_the_cost_arithmetic_is_the_previous_formula_digit_for_digit(
    rates: Rates, counts: tuple[int, int, int, int, int]
) -> None:
    cost = serving_cost(rates, **dict(zip(TOKEN_CLASSES, counts, strict=True)))
    previous = _previous_cost(rates, counts)
    assert cost == previous
    assert tuple(map(str, cost)) == tuple(map(str, previous))  # the same exponent too


def _random_part(request_id: uuid.UUID) -> int:
    return request_id.int & ((1 << 62) - 1)


def test_request_ids_keep_their_layout_and_differ_across_pool_refills() -> None:
    at = datetime(2026, 12, 5, 20, 0, 0, 123456, tzinfo=UTC)
    ids = [request_id_for(at) for _ in range(2 * record._POOL_IDS + 3)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        assert request_id.version == 7
        assert request_id.variant == uuid.RFC_4122
        assert started_at_of(request_id) == at
    # the random bits cover the whole 62 (not, say, a shifted 62 of a narrower value)
    parts = [_random_part(i) for i in ids]
    assert max(parts).bit_length() > 58


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_never_draws_the_request_ids_its_parent_draws() -> None:
    """The pool of random bits is the process's own: a child forked with a full pool
    starts a new one (else parent and child would give the same ids to their calls)."""
    at = datetime(2026, 12, 5, tzinfo=UTC)
    request_id_for(at)  # the parent's pool now holds values the child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids' random parts, then out at once
        try:
            os.write(
                write, " ".join(str(_random_part(request_id_for(at))) for _ in range(8)).encode()
            )
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = {int(part) for part in pipe.read().split()}
    os.waitpid(pid, 0)
    parent = {_random_part(request_id_for(at)) for _ in range(8)}
    assert len(child) == 8
    assert not child & parent


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_request_ids_are_built_as_uuid_builds_them(value: int) -> None:
    made, expected = record._uuid_of(value), uuid.UUID(int=value)
    assert type(made) is uuid.UUID
    assert made == expected and hash(made) == hash(expected)
    assert str(made) == str(expected) and made.bytes == expected.bytes
    assert made.is_safe is expected.is_safe
    assert made.version == expected.version and made.variant == expected.variant
    assert made.int == value and made.hex == expected.hex
