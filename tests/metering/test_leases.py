"""Leased admission against the real Redis: slices far from a limit, the exact path near
it, slices asked back (and lapsed) so that no call is refused while the budget covers
it, and the guarantee across several processes' stores."""

import asyncio
import random
import uuid

import pytest
import redis

from metering import control
from metering.control import BudgetCost, BudgetScope, ControlStore, Grant, RateScope

URL = "redis://127.0.0.1:6379/0"
HOLD = 100  # every call here holds 100 units of its budget


def budget(limit: int, used: int = 0) -> BudgetScope:
    return BudgetScope(
        key=f"rk:test:{uuid.uuid4()}",
        kind="spend",
        label="test spend",
        limit=limit,
        ttl_s=120,
        load_used=lambda: used,
    )


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def fields(b: BudgetScope) -> dict[str, int]:
    raw = redis.Redis.from_url(URL).hgetall(b.key)
    return {k.decode(): int(v) for k, v in raw.items() if not k.startswith((b"lo:", b"lt:"))}


async def admit(store: ControlStore, b: BudgetScope, rates=()):  # type: ignore[no-untyped-def]
    return await store.admit(
        budgets=[b],
        costs=[BudgetCost(HOLD, 0)],
        grant=Grant(1, 1),
        rates=list(rates),
        est_tokens=10,
        load_in_thread=direct,
    )


async def settle(store: ControlStore, b: BudgetScope, admission, actual: int = HOLD, rates=()):  # type: ignore[no-untyped-def]
    return await store.settle(
        budgets=[b],
        holds=[HOLD],
        actuals=[actual],
        rates=list(rates),
        token_delta=0,
        generations=admission.generations,
        token_windows=admission.token_windows,
        lease=admission.lease,
    )


def test_far_from_the_limit_calls_are_admitted_on_a_slice() -> None:
    b = budget(10**9)
    rate = RateScope("key", str(uuid.uuid4()), requests_per_minute=10**6, tokens_per_minute=None)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, lease_calls=8)
        first = await admit(store, b, [rate])
        during = fields(b)
        admissions = [first] + [await admit(store, b, [rate]) for _ in range(7)]
        afters = await asyncio.gather(*(settle(store, b, a, 40, [rate]) for a in admissions))
        settled = fields(b)
        await store.close()
        return admissions, during, afters, settled, fields(b)

    admissions, during, afters, settled, closed = asyncio.run(scenario())
    assert all(a.allowed and a.lease is not None for a in admissions)
    assert during["held"] == during["leased"] == 8 * HOLD  # one slice of 8 calls, in Redis
    assert sorted(after for (after,) in afters) == [40 * i for i in range(1, 9)]
    assert settled["spent"] == 320  # what the calls used, carried by one flush
    # with a quarter of the slice left a second one was taken ahead: 1600 less 320 used
    assert settled["held"] == settled["leased"] == 1280
    assert closed["held"] == 0 and closed["leased"] == 0  # closing gave the slice back
    # headers count calls, not slices: the window as this process saw it, plus its calls
    remaining = [dict(a.headers)[b"x-ratelimit-remaining-requests"] for a in admissions]
    assert remaining[0] == b"999999" and remaining[-1] == b"999992"


def test_near_the_limit_calls_go_through_the_exact_script() -> None:
    b = budget(10 * HOLD)  # room for 10 calls: far too little for a slice of 8

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, lease_calls=8)
        out = [await admit(store, b) for _ in range(11)]
        await store.close()
        return out

    out = asyncio.run(scenario())
    assert all(a.allowed and a.lease is None for a in out[:10])
    assert not out[10].allowed and out[10].reason == "budget"
    assert fields(b)["held"] == 10 * HOLD


def test_a_slice_is_asked_back_before_a_call_is_refused() -> None:
    b = budget(10_000 * HOLD)

    async def scenario():  # type: ignore[no-untyped-def]
        a, other = ControlStore(URL, lease_calls=100), ControlStore(URL)
        leased = await admit(a, b)  # a holds a slice of 100 calls, uses one
        # meanwhile the budget is nearly spent elsewhere: what is left outside a's slice
        # covers no call, but a's slice still has room for 99
        redis.Redis.from_url(URL).hincrby(b.key, "spent", (10_000 - 100) * HOLD)
        exact = await admit(other, b)
        await settle(a, b, leased)
        await a.close()
        await other.close()
        return leased, exact

    leased, exact = asyncio.run(scenario())
    assert leased.lease is not None
    assert exact.allowed  # a gave its slice back when asked; the call fit
    state = fields(b)
    assert state["leased"] == 0 and state["held"] == HOLD  # the exact call's hold


def test_the_slice_of_a_silent_process_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    b = budget(10_000 * HOLD)
    monkeypatch.setattr(control, "OWNER_TTL_S", 0)  # slices lapse at once unless refreshed

    async def scenario():  # type: ignore[no-untyped-def]
        dead, other = ControlStore(URL, lease_calls=100), ControlStore(URL)
        await admit(dead, b)
        dead.book = None  # the process is gone: no flush, no close
        redis.Redis.from_url(URL).hincrby(b.key, "spent", (10_000 - 100) * HOLD)
        exact = await admit(other, b)
        await other.close()
        return exact

    assert asyncio.run(scenario()).allowed
    assert fields(b)["leased"] == 0


def test_many_processes_never_pass_the_limit_and_fill_it() -> None:
    capacity = 3000  # calls the budget covers: slices at first, the exact path at the end
    b = budget(capacity * HOLD)
    rng = random.Random(7)

    async def scenario() -> tuple[int, int]:
        stores = [ControlStore(URL, lease_calls=16) for _ in range(3)]
        admitted = 0

        async def caller(store: ControlStore) -> None:
            nonlocal admitted
            while True:
                a = await admit(store, b)
                if not a.allowed:
                    return
                admitted += 1
                await asyncio.sleep(rng.random() / 1000)
                await settle(store, b, a)

        await asyncio.gather(*(caller(s) for s in stores for _ in range(12)))
        for s in stores:
            await s.close()
        return admitted, fields(b)["spent"]

    admitted, spent = asyncio.run(scenario())
    assert admitted == capacity  # no call refused while the budget covered it
    assert spent == capacity * HOLD  # and never past the limit
    assert fields(b)["held"] == 0


def test_a_slice_of_a_budget_that_left_redis_takes_no_more_calls() -> None:
    b = budget(10**9)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, lease_calls=8)
        first = await admit(store, b)
        old = store.book.budgets[b.key]  # type: ignore[union-attr]
        redis.Redis.from_url(URL).delete(b.key)  # Redis restarted
        await asyncio.sleep(0.15)  # a flush or two
        gone = b.key not in store.book.budgets  # type: ignore[union-attr]
        second = await admit(store, b)  # loaded again from the ledger, a new slice
        await settle(store, b, first)
        await settle(store, b, second)
        await store.close()
        return old, gone, second

    old, gone, second = asyncio.run(scenario())
    assert gone and old.dropped
    assert second.allowed and second.lease is not None and second.lease.budgets[0] is not old
    assert fields(b)["held"] == 0 and fields(b)["spent"] == HOLD  # only the second call
