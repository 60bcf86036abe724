"""The control store's scripts against the real Redis: holds, settlement, lazy loading
from the ledger, and rate windows."""

import asyncio
import uuid
from decimal import Decimal

import pytest
import redis

from metering.control import ControlStore, RateScope, SpendScope, to_nano

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def store():  # type: ignore[no-untyped-def]
    yield ControlStore(URL, window_s=60)


def scope(limit: str, spent: str = "0") -> SpendScope:
    return SpendScope(
        key=f"rk:test:{uuid.uuid4()}",
        limit_nano=to_nano(Decimal(limit)),
        ttl_s=60,
        load_spent=lambda: Decimal(spent),
    )


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_hold_settle_and_lazy_load(store) -> None:  # type: ignore[no-untyped-def]
    s = scope("1.00", spent="0.40")  # the ledger already holds $0.40 of spend

    async def scenario():  # type: ignore[no-untyped-def]
        first = await store.admit(
            spend=[s],
            rates=[],
            hold_nano=to_nano(Decimal("0.50")),
            est_tokens=1,
            load_in_thread=direct,
        )
        second = await store.admit(
            spend=[s],
            rates=[],
            hold_nano=to_nano(Decimal("0.20")),
            est_tokens=1,
            load_in_thread=direct,
        )
        await store.settle(
            spend=[s],
            rates=[],
            hold_nano=to_nano(Decimal("0.50")),
            actual_nano=to_nano(Decimal("0.05")),
            token_delta=0,
        )
        third = await store.admit(
            spend=[s],
            rates=[],
            hold_nano=to_nano(Decimal("0.50")),
            est_tokens=1,
            load_in_thread=direct,
        )
        await store.close()
        return first, second, third

    first, second, third = run(scenario())
    assert first.allowed
    assert not second.allowed and second.reason == "spend"
    assert second.remaining_usd == Decimal("0.10")  # 1.00 - 0.40 spent - 0.50 held
    assert third.allowed  # the hold was released down to the $0.05 actually spent
    state = redis.Redis.from_url(URL).hgetall(s.key)
    assert int(state[b"spent"]) == to_nano(Decimal("0.45")) and int(state[b"held"]) == to_nano(
        Decimal("0.50")
    )


def test_rate_window_counts_requests_and_tokens(store) -> None:  # type: ignore[no-untyped-def]
    rate = RateScope("key", str(uuid.uuid4()), requests_per_minute=2, tokens_per_minute=1000)

    async def scenario():  # type: ignore[no-untyped-def]
        out = [
            await store.admit(
                spend=[], rates=[rate], hold_nano=0, est_tokens=400, load_in_thread=direct
            )
            for _ in range(3)
        ]
        await store.close()
        return out

    a, b, c = run(scenario())
    assert a.allowed and b.allowed and not c.allowed
    assert c.reason == "requests" and c.retry_after_s >= 1
    assert dict(b.headers)[b"x-ratelimit-remaining-tokens"] == b"200"


def test_to_nano_rounds_up() -> None:
    assert to_nano(Decimal("0.0000000001")) == 1
    assert to_nano(Decimal("1")) == 1_000_000_000
