"""The control store's scripts against the real Redis: holds, grants, settlement, lazy
loading from the ledger, and rate windows."""

import asyncio
import os
import uuid
from decimal import Decimal

import pytest
import redis

from metering.control.scopes import BudgetCost, BudgetScope, Grant, RateScope, to_nano
from metering.control.store import ControlStore
from tests.metering.control.timeouts import REDIS_TIMEOUT_S

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def store():  # type: ignore[no-untyped-def]
    yield ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, window_s=60)


def budget(limit: int, used: int = 0, kind: str = "spend") -> BudgetScope:
    return BudgetScope(
        key=f"rk:test:{uuid.uuid4()}",
        kind=kind,
        label=f"test {kind}",
        limit=limit,
        ttl_s=60,
        load_used=lambda: used,
    )


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def admit(store, budgets, costs, grant, rates=(), est_tokens=1):  # type: ignore[no-untyped-def]
    return store.admit(
        budgets=list(budgets),
        costs=list(costs),
        grant=grant,
        rates=list(rates),
        est_tokens=est_tokens,
        load_in_thread=direct,
    )


def state(b: BudgetScope) -> tuple[int, int]:
    raw = redis.Redis.from_url(URL).hgetall(b.key)
    return int(raw[b"spent"]), int(raw[b"held"])


def test_hold_settle_and_lazy_load(store) -> None:  # type: ignore[no-untyped-def]
    s = budget(to_nano(Decimal("1.00")), used=to_nano(Decimal("0.40")))  # ledger: $0.40 spent
    half = BudgetCost(to_nano(Decimal("0.50")), 0)
    fifth = BudgetCost(to_nano(Decimal("0.20")), 0)

    async def scenario():  # type: ignore[no-untyped-def]
        first = await admit(store, [s], [half], Grant(1, 1))
        second = await admit(store, [s], [fifth], Grant(1, 1))
        used = await store.settle(
            budgets=[s],
            holds=[half.fixed],
            actuals=[to_nano(Decimal("0.05"))],
            rates=[],
            token_delta=0,
            generations=first.generations,
        )
        third = await admit(store, [s], [half], Grant(1, 1))
        await store.close()
        return first, second, used, third

    first, second, used, third = run(scenario())
    assert first.allowed and first.output_tokens == 1
    assert not second.allowed and second.reason == "budget" and second.budget == s
    assert second.left == to_nano(Decimal("0.10"))  # 1.00 - 0.40 spent - 0.50 held
    assert used == [to_nano(Decimal("0.45"))]  # settle reports the use after settling
    assert third.allowed  # the hold was released down to the $0.05 actually spent
    assert state(s) == (to_nano(Decimal("0.45")), to_nano(Decimal("0.50")))


def test_a_call_settling_after_its_budget_was_reloaded_frees_no_other_hold(store) -> None:  # type: ignore[no-untyped-def]
    s = budget(1000)
    cost = BudgetCost(0, 1)

    async def scenario():  # type: ignore[no-untyped-def]
        def hold(tokens: int):  # type: ignore[no-untyped-def]
            return admit(store, [s], [cost], Grant(tokens, tokens))

        a = await hold(600)
        redis.Redis.from_url(URL).delete(s.key)  # Redis restarted: the budget is gone
        b = await hold(400)  # reloaded from the ledger (nothing spent yet), holds 400
        await store.settle(
            budgets=[s],
            holds=[600],
            actuals=[0],
            rates=[],
            token_delta=0,
            generations=a.generations,
        )  # A's hold was never on this generation: B's hold must stay
        c = await hold(700)  # 400 held + 700 > 1000
        return a, b, c

    a, b, c = run(scenario())
    assert a.allowed and b.allowed and a.generations != b.generations
    assert not c.allowed  # had A's settlement freed B's hold, C would be admitted
    assert c.left == 600


def test_first_use_loads_every_missing_budget(store) -> None:  # type: ignore[no-untyped-def]
    budgets = [budget(1000, kind="reasoning") for _ in range(5)]

    async def scenario():  # type: ignore[no-untyped-def]
        return await admit(store, budgets, [BudgetCost(0, 1)] * 5, Grant(10, 10))

    assert run(scenario()).allowed


def test_a_named_maximum_is_all_or_nothing(store) -> None:  # type: ignore[no-untyped-def]
    s = budget(10_000)
    cost = BudgetCost(100, 10)  # 100 + 10 per output token

    async def scenario():  # type: ignore[no-untyped-def]
        a = await admit(store, [s], [cost], Grant(900, 900))  # 9100 held
        b = await admit(
            store, [s], [cost], Grant(90, 90)
        )  # 1000 more would make 10100: refused although 900 is left
        c = await admit(store, [s], [cost], Grant(80, 80))  # 900 exactly fits
        await store.close()
        return a, b, c

    a, b, c = run(scenario())
    assert a.allowed and a.output_tokens == 900
    assert not b.allowed and b.left == 900
    assert c.allowed and c.output_tokens == 80
    assert state(s) == (0, 10_000)


def test_an_open_call_gets_the_ceiling_then_shares_then_the_plausible_floor(store) -> None:  # type: ignore[no-untyped-def]
    s = budget(100_000)
    cost = BudgetCost(0, 10)  # 10 per output token: room for 10,000 tokens
    open_call = Grant(out_min=1_000, out_max=8_000, share=4)

    async def scenario():  # type: ignore[no-untyped-def]
        out = []
        for _ in range(8):
            out.append(await admit(store, [s], [cost], open_call))
        await store.close()
        return out

    grants = run(scenario())
    # 10000 tokens of room: 1st gets its ceiling only if room/4 >= 8000 (no: 2500);
    # then 7500/4 -> 1875; 5625/4 -> 1406; 4219/4 -> 1054; 3165/4 -> floor 1000; ...
    tokens = [g.output_tokens for g in grants if g.allowed]
    assert tokens[:5] == [2500, 1875, 1406, 1054, 1000]
    assert all(t >= open_call.out_min for t in tokens)
    spent, held = state(s)
    assert held == 10 * sum(tokens) <= 100_000  # never more than the budget
    refused = [g for g in grants if not g.allowed]
    assert len(tokens) == 7 and len(refused) == 1 and refused[0].left == 1650
    assert all(g.left < 10 * open_call.out_min for g in refused)  # refused only below the floor


def test_the_tightest_budget_decides_and_every_budget_is_held(store) -> None:  # type: ignore[no-untyped-def]
    money = budget(1_000_000)
    reasoning = budget(300, kind="reasoning")

    async def scenario():  # type: ignore[no-untyped-def]
        a = await admit(
            store,
            [money, reasoning],
            [BudgetCost(500, 100), BudgetCost(0, 1)],
            Grant(out_min=100, out_max=1000, share=1),
        )
        await store.close()
        return a

    a = run(scenario())
    assert a.allowed and a.output_tokens == 300  # the reasoning budget has 300 tokens left
    assert state(money) == (0, 500 + 100 * 300) and state(reasoning) == (0, 300)


def test_rate_window_counts_requests_and_tokens(store) -> None:  # type: ignore[no-untyped-def]
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=2, tokens_per_minute=1000, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        out = [
            await admit(store, [], [], Grant(1, 1), rates=[rate], est_tokens=400) for _ in range(3)
        ]
        await store.close()
        return out

    a, b, c = run(scenario())
    assert a.allowed and b.allowed and not c.allowed
    assert c.reason == "requests" and c.retry_after_s >= 1
    assert dict(b.headers)[b"x-ratelimit-remaining-tokens"] == b"200"
    client = redis.Redis.from_url(URL)
    (window,) = client.scan_iter(f"rk:{{t}}:rl:key:{rate.scope_id}:*")  # requests and tokens
    assert client.hgetall(window) == {b"r": b"2", b"t": b"800"}  # the refused call is not
    assert 0 < client.ttl(window) <= 120  # expires after two windows


def test_to_nano_rounds_up() -> None:
    assert to_nano(Decimal("0.0000000001")) == 1
    assert to_nano(Decimal("1")) == 1_000_000_000


def test_token_corrections_go_to_the_window_the_call_was_counted_in() -> None:
    store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, window_s=1)
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=None, tokens_per_minute=10**6, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        admitted = await admit(store, [], [], Grant(1, 1), rates=[rate], est_tokens=1000)
        await asyncio.sleep(1.1)  # the call ends in a later window
        await store.settle(
            budgets=[],
            holds=[],
            actuals=[],
            rates=[rate],
            token_delta=-700,
            token_windows=admitted.token_windows,
        )
        await store.close()
        return admitted

    admitted = run(scenario())
    client = redis.Redis.from_url(URL)
    (window,) = admitted.token_windows
    assert int(client.hget(window, "t")) == 300
    assert len(list(client.scan_iter(f"rk:{{t}}:rl:key:{rate.scope_id}:*"))) == 1


def test_a_hold_of_nothing_settles(store) -> None:  # type: ignore[no-untyped-def]
    s = budget(1000)
    free = BudgetCost(0, 0)  # a free alias: nothing held, nothing spent

    async def scenario():  # type: ignore[no-untyped-def]
        a = await admit(store, [s], [free], Grant(10, 10))
        after = await store.settle(
            budgets=[s], holds=[0], actuals=[0], rates=[], token_delta=0, generations=a.generations
        )
        await store.close()
        return after

    assert run(scenario()) == [0]  # Lua's -0 used to make Redis refuse the whole settlement
